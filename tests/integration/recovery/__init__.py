"""Integration tests of zombieguard.recovery against a real Redis: the sweeper and silence alerts."""
