"""`reasoner solve`."""


def add_parser(subparsers):
    parser = subparsers.add_parser("solve", help="(not yet available)")
    parser.set_defaults(func=lambda args: print("reasoner solve: not yet available") or 1)
