"""One module per CLI command; each exposes `add_parser(subparsers)` which sets `func=run(args) -> int`."""
