"""Chaos tests: real workers under random combined faults, and a checker of every job's history."""
