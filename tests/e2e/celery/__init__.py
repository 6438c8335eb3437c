"""End-to-end tests of the Celery integration, with real workers."""
