"""End-to-end tests of the operator tools (zombieguard doctor, zombieguard kill) with real workers."""
