"""`reasoner traces`."""


def add_parser(subparsers):
    parser = subparsers.add_parser("traces", help="(not yet available)")
    parser.set_defaults(func=lambda args: print("reasoner traces: not yet available") or 1)
