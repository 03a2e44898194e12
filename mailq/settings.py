"""mailq settings: everything comes from environment variables, with working local defaults.

The typed helpers fail loudly on a malformed value instead of silently using a default.
"""

import os
import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-secret-key-change-me")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "customers",
    "templates.apps.EmailTemplatesConfig",
    "delivery",
]

MIDDLEWARE = [
    # First: it counts and times every answer, the 413s of the next one too.
    "mailq.middleware.RequestMetricsMiddleware",
    "mailq.middleware.BodySizeLimitMiddleware",
    # RateLimit headers, quota give-back and invalid-request counting (customers/throttling.py).
    "customers.throttling.RateLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mailq.urls"
WSGI_APPLICATION = "mailq.wsgi.application"

# Only Django's own admin templates are file-based; customer templates live in the database.
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", "postgres://mailq:mailq@127.0.0.1:5432/mailq"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Every API request makes one Redis call (the throttle): a hung Redis must cost milliseconds,
# not seconds, before the throttle fails open (customers/throttling.py).
MAILQ_REDIS_TIMEOUT_SECONDS = env_float("MAILQ_REDIS_TIMEOUT_SECONDS", 0.25)
REDIS_OPTIONS = {
    "socket_connect_timeout": MAILQ_REDIS_TIMEOUT_SECONDS,
    "socket_timeout": MAILQ_REDIS_TIMEOUT_SECONDS,
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "mailq",
        "OPTIONS": REDIS_OPTIONS,
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Bodies over this size are refused with 413 before anything parses them.
MAILQ_MAX_BODY_BYTES = env_int("MAILQ_MAX_BODY_BYTES", 256 * 1024)
# A batch of 500 messages legitimately needs more room than a single send.
MAILQ_MAX_BATCH_BODY_BYTES = env_int("MAILQ_MAX_BATCH_BODY_BYTES", 4 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(MAILQ_MAX_BODY_BYTES, MAILQ_MAX_BATCH_BODY_BYTES)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["customers.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["mailq.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "mailq.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["customers.throttling.CustomerThrottle"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mailq API",
    "DESCRIPTION": "Templated transactional email, delivered in real time.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- delivery -------------------------------------------------------------------------------
# fair: per-customer in-flight caps, backlog waits in PostgreSQL (docs/fair-share.md).
# fifo: everything straight to the tier queue (the naive baseline, for benchmarks).
MAILQ_ROUTING = env_str("MAILQ_ROUTING", "fair")
if MAILQ_ROUTING not in ("fair", "fifo"):
    raise ImproperlyConfigured(f"MAILQ_ROUTING must be 'fair' or 'fifo', got {MAILQ_ROUTING!r}")
# Provider URLs in failover order.
MAILQ_PROVIDERS = env_list("MAILQ_PROVIDERS", "smtp://127.0.0.1:1025")
MAILQ_DEFAULT_FROM = env_str("MAILQ_DEFAULT_FROM", "mailq <no-reply@mailq.localhost>")
MAILQ_MESSAGE_ID_DOMAIN = env_str("MAILQ_MESSAGE_ID_DOMAIN", "mailq.localhost")
MAILQ_MAX_ATTEMPTS = env_int("MAILQ_MAX_ATTEMPTS", 8)
MAILQ_RETRY_BASE_SECONDS = env_float("MAILQ_RETRY_BASE_SECONDS", 2.0)
MAILQ_RETRY_MAX_SECONDS = env_float("MAILQ_RETRY_MAX_SECONDS", 600.0)
MAILQ_SMTP_TIMEOUT_SECONDS = env_float("MAILQ_SMTP_TIMEOUT_SECONDS", 10.0)
# HTTP providers (delivery/providers/anymail.py); a provider URL's ?timeout= wins.
MAILQ_HTTP_TIMEOUT_SECONDS = env_float("MAILQ_HTTP_TIMEOUT_SECONDS", 10.0)
# Circuit breaker per provider (delivery/breaker.py): opens after this many temporary failures
# in a row (across all workers), probes again after the reset time.
MAILQ_BREAKER_FAIL_MAX = env_int("MAILQ_BREAKER_FAIL_MAX", 5)
MAILQ_BREAKER_RESET_SECONDS = env_float("MAILQ_BREAKER_RESET_SECONDS", 30.0)
# How old each process's view of its breakers may be: a healthy send then costs no Redis call.
MAILQ_BREAKER_VIEW_SECONDS = env_float("MAILQ_BREAKER_VIEW_SECONDS", 1.0)
# After a Redis error a process treats every breaker as closed, without asking Redis, this long.
MAILQ_BREAKER_REDIS_RETRY_SECONDS = env_float("MAILQ_BREAKER_REDIS_RETRY_SECONDS", 5.0)
# A queued message never confirmed as published is re-published after this long.
MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS = env_float("MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS", 10.0)
# A queued message published this long ago and never claimed lost its task in the broker; it is
# published again (fair mode, where the broker holds only what is about to be sent).
MAILQ_SWEEP_STALE_QUEUED_AFTER_SECONDS = env_float("MAILQ_SWEEP_STALE_QUEUED_AFTER_SECONDS", 900.0)
# A message left in `sending` this long belongs to a worker that died; it is sent again.
MAILQ_SENDING_LEASE_SECONDS = env_float("MAILQ_SENDING_LEASE_SECONDS", 120.0)
MAILQ_SWEEP_INTERVAL_SECONDS = env_float("MAILQ_SWEEP_INTERVAL_SECONDS", 2.0)
MAILQ_SWEEP_BATCH = env_int("MAILQ_SWEEP_BATCH", 500)
# Message ids carried by one task when a batch is accepted.
MAILQ_TASK_BATCH_SIZE = env_int("MAILQ_TASK_BATCH_SIZE", 50)
# Outcomes are written every this many sends: the most a worker crash can make us send twice.
# 5 costs what 10 did before recording became one statement; 1 costs ~0.15 ms more worker CPU
# and ~0.6 ms more per message (docs/delivery-guarantees.md).
MAILQ_RECORD_EVERY = env_int("MAILQ_RECORD_EVERY", 5)
if MAILQ_RECORD_EVERY < 1:
    raise ImproperlyConfigured(f"MAILQ_RECORD_EVERY must be at least 1, got {MAILQ_RECORD_EVERY}")
# GET /v1/stats counts unfinished messages live, reading at most this many rows per status.
MAILQ_STATS_LIVE_LIMIT = env_int("MAILQ_STATS_LIVE_LIMIT", 10_000)
# The sweeper deletes statistics rollups older than this (the API and status page read 24 h).
MAILQ_STATS_RETENTION_DAYS = env_int("MAILQ_STATS_RETENTION_DAYS", 8)
# How long a status page link is valid: made by an operator in the admin, or by the customer
# pasting its API key.
MAILQ_STATUS_LINK_SECONDS = env_int("MAILQ_STATUS_LINK_SECONDS", 7 * 24 * 3600)
MAILQ_STATUS_KEY_LINK_SECONDS = env_int("MAILQ_STATUS_KEY_LINK_SECONDS", 3600)
MAILQ_BATCH_MAX_ITEMS = 500
MAILQ_MAX_RECIPIENTS = env_int("MAILQ_MAX_RECIPIENTS", 50)
MAILQ_MAINTENANCE_QUEUE = "mailq.maintenance"
# A customer with fewer messages than this in flight is quiet: its messages take the express
# lane (docs/fair-share.md). 0 turns the express lane off.
MAILQ_EXPRESS_INFLIGHT = env_int("MAILQ_EXPRESS_INFLIGHT", 5)
# Threads of the express pool (worker_express): each holds its own provider connections.
MAILQ_EXPRESS_CONCURRENCY = env_int("MAILQ_EXPRESS_CONCURRENCY", 4)
MAILQ_EXPRESS_POOL = env_str("MAILQ_EXPRESS_POOL", "threads")
if MAILQ_EXPRESS_POOL not in ("threads", "prefork"):
    raise ImproperlyConfigured(
        f"MAILQ_EXPRESS_POOL must be threads or prefork, not {MAILQ_EXPRESS_POOL!r}"
    )
# Tier pools, and their PostgreSQL backends when the database is local, run this much nicer
# than web and the express lane (0 = same priority; 19 = the lowest). delivery/priority.py
MAILQ_BULK_NICE = env_int("MAILQ_BULK_NICE", 19)

# --- throttling, quotas, abuse (customers/throttling.py, customers/abuse.py) -----------------
# 0 turns off rate limits, quota enforcement, the IP lockout and abuse detection (usage is still
# counted). Off only for benchmarks and emergencies.
MAILQ_THROTTLING = env_bool("MAILQ_THROTTLING", True)
# After a failed Redis call a web process fails open without calling Redis for this long.
MAILQ_THROTTLE_RETRY_SECONDS = env_float("MAILQ_THROTTLE_RETRY_SECONDS", 5.0)
# Failed authentications per client IP (a django-ratelimit rate: N/s, N/m, N/h, N/d), then the
# IP answers 429 for the cool-down.
MAILQ_AUTH_FAILURE_RATE = env_str("MAILQ_AUTH_FAILURE_RATE", "10/m")
if not re.fullmatch(r"\d+/\d*[smhd]", MAILQ_AUTH_FAILURE_RATE):
    raise ImproperlyConfigured(
        f"MAILQ_AUTH_FAILURE_RATE must look like 10/m, got {MAILQ_AUTH_FAILURE_RATE!r}"
    )
MAILQ_AUTH_LOCKOUT_SECONDS = env_int("MAILQ_AUTH_LOCKOUT_SECONDS", 300)
# The request.META key holding the client address: behind a reverse proxy, the header it sets
# (e.g. HTTP_X_REAL_IP); never a header the client can set itself.
MAILQ_CLIENT_IP_META = env_str("MAILQ_CLIENT_IP_META", "REMOTE_ADDR")
RATELIMIT_USE_CACHE = "default"
RATELIMIT_FAIL_OPEN = True  # the documented choice (customers/throttling.py)
# Abuse detection, per customer and window: flag for an operator, then suspend.
MAILQ_ABUSE_WINDOW_SECONDS = env_int("MAILQ_ABUSE_WINDOW_SECONDS", 60)
MAILQ_ABUSE_FLAG_MIN_REQUESTS = env_int("MAILQ_ABUSE_FLAG_MIN_REQUESTS", 50)
MAILQ_ABUSE_FLAG_INVALID_RATIO = env_float("MAILQ_ABUSE_FLAG_INVALID_RATIO", 0.5)
MAILQ_ABUSE_FLAG_REFUSED = env_int("MAILQ_ABUSE_FLAG_REFUSED", 300)
MAILQ_ABUSE_SUSPEND_MIN_REQUESTS = env_int("MAILQ_ABUSE_SUSPEND_MIN_REQUESTS", 500)
MAILQ_ABUSE_SUSPEND_INVALID_RATIO = env_float("MAILQ_ABUSE_SUSPEND_INVALID_RATIO", 0.9)
MAILQ_ABUSE_SUSPEND_REFUSED = env_int("MAILQ_ABUSE_SUSPEND_REFUSED", 3000)

# --- observability (delivery/metrics.py, docs/observability.md) -------------------------------
# Bearer token that /metrics requires; empty: only loopback clients may scrape it.
MAILQ_METRICS_TOKEN = env_str("MAILQ_METRICS_TOKEN", "")
# prometheus-client's multiprocess mode: every gunicorn and Celery process writes its counters
# there, /metrics sums them. The library reads the variable itself; a wrong path would only
# fail at the first count, so check it here.
_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _multiproc_dir and not os.path.isdir(_multiproc_dir):
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR={_multiproc_dir!r} is not a directory (create it, empty)"
    )
# Seconds between the operator dashboard's refreshes.
MAILQ_DASHBOARD_REFRESH_SECONDS = env_int("MAILQ_DASHBOARD_REFRESH_SECONDS", 5)

# --- Celery (namespace CELERY_) ---------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Publisher confirms: apply_async returns only once RabbitMQ has taken the message.
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_POOL_LIMIT = env_int("CELERY_BROKER_POOL_LIMIT", 10)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = MAILQ_MAINTENANCE_QUEUE
# Classic durable queues on a single RabbitMQ node; quorum queues (replicated by Raft) on a
# cluster. mailq uses nothing quorum queues lack (priorities, ETA, global QoS, --autoscale).
# A queue declared with the other type is replaced at worker start (delivery/queues.py).
MAILQ_QUEUE_TYPE = env_str("MAILQ_QUEUE_TYPE", "classic")
if MAILQ_QUEUE_TYPE not in ("classic", "quorum"):
    raise ImproperlyConfigured(
        f"MAILQ_QUEUE_TYPE must be 'classic' or 'quorum', got {MAILQ_QUEUE_TYPE!r}"
    )
CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = MAILQ_QUEUE_TYPE
CELERY_TASK_DEFAULT_QUEUE_TYPE = MAILQ_QUEUE_TYPE
CELERY_TASK_DEFAULT_DELIVERY_MODE = "persistent"
# At-least-once: ack after the task ran, requeue when the worker process dies mid-task.
# The send ledger (a conditional UPDATE on the message row) makes the second delivery harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A task running when the broker connection drops cannot be acked and comes back anyway:
# Celery cancels it with SIGTERM, which a delivery turns into "record the sends made, hand
# back the rest" (delivery/tasks.py), so it neither sends twice nor leaves `sending` behind.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("MAILQ_TASK_EVENTS", True)
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Keep each worker process's PostgreSQL connection across tasks: without this Celery's Django
# fix-up closes it after every task, and a new connection costs more than a whole send.
# (Django's conn_health_checks replaces a connection that broke.)
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 100_000)
CELERY_BEAT_SCHEDULE = {
    "sweep": {
        "task": "delivery.tasks.sweep",
        "schedule": MAILQ_SWEEP_INTERVAL_SECONDS,
        "options": {"queue": MAILQ_MAINTENANCE_QUEUE, "expires": 30},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
