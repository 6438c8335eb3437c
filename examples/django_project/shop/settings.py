"""Settings of the example project."""

import os

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

SECRET_KEY = "example-only"
INSTALLED_APPS = ["django_rq", "zombieguard.integrations.django", "shop"]
USE_TZ = True
TIME_ZONE = "UTC"

# zombieguard: one place for both Celery and RQ.
ZOMBIEGUARD = {
    "REDIS_URL": REDIS_URL,
    "DEFAULTS": {"hard_timeout": 2},
}

# django-rq
RQ_QUEUES = {"default": {"URL": REDIS_URL}}

# Celery, read with namespace="CELERY"
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = "zombieguard-example-django"
