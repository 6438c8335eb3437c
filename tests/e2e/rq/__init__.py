"""End-to-end tests of the RQ integration, with real workers."""
