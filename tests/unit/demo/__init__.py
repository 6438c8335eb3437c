"""Unit tests of zombieguard.demo: its tables and what it says about each run."""
