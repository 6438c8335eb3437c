"""Integration tests of zombieguard.leases against a real Redis: the scripts and the pipelined acquire."""
