"""`reasoner demo`."""


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="(not yet available)")
    parser.set_defaults(func=lambda args: print("reasoner demo: not yet available") or 1)
