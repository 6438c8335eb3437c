"""Unit tests of zombieguard.enforcement: limits, slots, the watchdog thread and process."""
