"""`reasoner info`."""


def add_parser(subparsers):
    parser = subparsers.add_parser("info", help="(not yet available)")
    parser.set_defaults(func=lambda args: print("reasoner info: not yet available") or 1)
