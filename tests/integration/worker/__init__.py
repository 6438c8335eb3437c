"""Integration tests of zombieguard.worker against a real Redis: heartbeat and lifecycle."""
