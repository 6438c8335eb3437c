"""The example project: Celery and django-rq side by side, both guarded by settings.ZOMBIEGUARD."""

from shop.celery import app as celery_app

__all__ = ["celery_app"]
