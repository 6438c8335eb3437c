"""Celery integration tests, on real Redis."""
