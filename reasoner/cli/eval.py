"""`reasoner eval`."""


def add_parser(subparsers):
    parser = subparsers.add_parser("eval", help="(not yet available)")
    parser.set_defaults(func=lambda args: print("reasoner eval: not yet available") or 1)
