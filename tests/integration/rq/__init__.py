"""RQ integration tests, on real Redis."""
