"""The operator's tools: the ``zombieguard`` command, its checks, and the metrics exporter."""
