"""`reasoner train`."""


def add_parser(subparsers):
    parser = subparsers.add_parser("train", help="(not yet available)")
    parser.set_defaults(func=lambda args: print("reasoner train: not yet available") or 1)
