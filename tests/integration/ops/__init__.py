"""Integration tests of zombieguard.ops against a real Redis: the metrics exporter."""
