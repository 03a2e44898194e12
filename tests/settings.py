"""Test settings: the real services, but a database, vhost and Redis db of their own.

A running development stack (`make run`) and a test run never see each other's data:
pytest-django creates `test_mailq`, the broker vhost is `mailq_test` (scripts/services.sh
creates it), and Redis db 1 holds the cache. Two test runs at once (two checkouts) must not
consume each other's tasks either, so every queue name carries a prefix unique to the run;
the worker processes a run starts inherit it through the environment.
"""

import os

from mailq.settings import *  # noqa: F403
from mailq.settings import REDIS_OPTIONS, env_list, env_str

QUEUE_PREFIX = os.environ.setdefault("MAILQ_TEST_QUEUE_PREFIX", f"t{os.getpid()}.")
MAILQ_MAINTENANCE_QUEUE = f"{QUEUE_PREFIX}mailq.maintenance"
CELERY_TASK_DEFAULT_QUEUE = MAILQ_MAINTENANCE_QUEUE

CELERY_BROKER_URL = env_str("MAILQ_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/mailq_test")
REDIS_URL = env_str("MAILQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/1")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "mailq-test",
        "OPTIONS": REDIS_OPTIONS,
    }
}
# Nothing is sent anywhere unless a test points providers at its own SMTP sink.
MAILQ_PROVIDERS = env_list("MAILQ_TEST_PROVIDERS", "console://")
MAILQ_RETRY_BASE_SECONDS = 0.2
MAILQ_RETRY_MAX_SECONDS = 1.0
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
