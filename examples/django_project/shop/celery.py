"""Celery's usual Django setup, plus one line: ``install(app)``."""

import os

from celery import Celery

from zombieguard.integrations.celery import install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
install(app)
