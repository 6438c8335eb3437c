"""Unit tests of zombieguard.worker."""
