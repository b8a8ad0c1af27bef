"""One module per CLI verb. Each exposes `NAME`, `HELP`, `register(parser)` and `run(args) -> int`."""
