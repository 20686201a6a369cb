"""`reasoner serve`."""


def add_parser(subparsers):
    parser = subparsers.add_parser("serve", help="(not yet available)")
    parser.set_defaults(func=lambda args: print("reasoner serve: not yet available") or 1)
