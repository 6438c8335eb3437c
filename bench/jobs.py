"""Jobs the benchmarks enqueue: a module with no imports, so that importing it costs nothing."""


def noop() -> None:
    """The cheapest job there is."""
