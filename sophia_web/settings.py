"""Sophia settings, read from the environment (DESIGN §9).

With no DATABASE_URL / REDIS_URL Sophia runs on the embedded default: SQLite, the in-process
channel layer and a local-memory cache. With them it runs on PostgreSQL (Django's connection
pool) and Redis (cache, locks, state and channels_redis).
"""

import datetime as dt
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from sophia_web import static_files

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str = "False") -> bool:
    value = os.getenv(name, default).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean, got {value!r}")


def envint(name: str, default: str) -> int:
    value = os.getenv(name, default)
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


def envsecret(name: str, default: str = "") -> str:
    """A secret from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    path = os.getenv(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.getenv(name, default)


def prepare_threshold() -> int | None:
    value = os.getenv("DB_PREPARE_THRESHOLD", "5").strip().lower()
    if value in ("", "none", "off"):
        return None
    try:
        return max(0, int(value))
    except ValueError:
        raise ImproperlyConfigured(
            f"DB_PREPARE_THRESHOLD must be a whole number or 'none', not {value!r}"
        ) from None


def database_from_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme in {"postgres", "postgresql"}:
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        pool = {"min_size": envint("DB_POOL_MIN", "1"), "max_size": envint("DB_POOL_MAX", "20")}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "sophia",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            # Server-side binding: psycopg sends parameters apart from the SQL. Prepared
            # statements: psycopg prepares a statement the 5th time a connection runs it (its
            # own default; Django turns it off for transaction-mode poolers, and Sophia connects
            # straight to PostgreSQL through its own pool), so the webhook's, the turn's and
            # the booking's statements are parsed and planned once per connection, not every
            # time (bench/README.md, "Fourth session"). DB_PREPARE_THRESHOLD=none turns it off.
            "OPTIONS": {
                "server_side_binding": True,
                "prepare_threshold": prepare_threshold(),
                **options,
                "pool": pool,
            },
            "TEST": {"NAME": os.getenv("TEST_DATABASE_NAME") or None},
        }
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path or ":memory:"}
    raise ImproperlyConfigured(f"DATABASE_URL scheme {parts.scheme!r} is not supported")


DEBUG = envbool("DEBUG", "False")
SECRET_KEY = envsecret("SECRET_KEY")
if not SECRET_KEY:
    # Only the embedded demo (no DATABASE_URL) may run without a secret of its own.
    if os.getenv("DATABASE_URL"):
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set with DATABASE_URL")
    SECRET_KEY = "sophia-embedded-demo-only-not-secret"
ALLOWED_HOSTS = [h.strip() for h in os.getenv("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.getenv("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "axes",
    "channels",
    "django_tasks_db",
    "clinics",
    "bot",
    "outreach",
    "console",
]

# sophia_web.handler runs this chain in one thread per request from the view up to servestatic's
# middleware, the only async-only one: first, so every other runs in that thread (a middleware
# above it would cost two thread hand-offs per request). Its files get SecurityMiddleware's
# headers from sophia_web.static_files.security_headers instead.
MIDDLEWARE = [
    "servestatic.middleware.ServeStaticMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

# Requests running their synchronous part (middleware and view) at once, in daphne; more wait
# for a free thread on the event loop (sophia_web.handler). Two per CPU: enough to overlap the
# database round trips, few enough not to spend the CPU handing the GIL around.
SOPHIA_WEB_THREADS = envint("SOPHIA_WEB_THREADS", str(2 * (os.cpu_count() or 1)))
if SOPHIA_WEB_THREADS < 1:
    raise ImproperlyConfigured("SOPHIA_WEB_THREADS must be at least 1")

ROOT_URLCONF = "sophia_web.urls"
ASGI_APPLICATION = "sophia_web.asgi.application"
WSGI_APPLICATION = None

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
                "clinics.access.console_context",
            ],
        },
    },
]

DATABASE_URL = os.getenv("DATABASE_URL", "")
REDIS_URL = os.getenv("REDIS_URL", "")

if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.getenv("SQLITE_PATH", str(BASE_DIR / "var" / "sophia.sqlite3")),
            # The web server and the worker share the file: wait for locks instead of failing.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "sophia:cache",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 times socket reads out after 5 s by default: exactly channels_redis'
            # blocking receive (BZPOPMIN, 5 s), which then kills consumers at random.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "prefix": "sophia:channels",
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Background jobs: Django's tasks API on the database backend (django-tasks-db). Works on SQLite
# (the demo) and PostgreSQL (SKIP LOCKED claims, any number of workers).
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default", "outbox", "turns", "outreach"],
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
AUTHENTICATION_BACKENDS = [
    # django-axes first: it refuses a locked-out username/address before any password check.
    "sophia_web.auth.ThrottledLoginBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "login"

# Login throttling (django-axes): 5 failures for one username from one address lock that pair
# for 15 minutes; attempts are kept in the database so every web process sees them.
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", "5")
AXES_COOLOFF_TIME = dt.timedelta(minutes=envint("AXES_COOLOFF_MINUTES", "15"))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

LANGUAGE_CODE = "es"
LANGUAGES = [("es", "Español"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "America/Bogota"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "static"
# servestatic serves /static/ from daphne itself (compose also has nginx in front); from the
# source folders too, so a checkout serves its CSS/JS without collectstatic.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = DEBUG
SERVESTATIC_ADD_HEADERS_FUNCTION = static_files.security_headers
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# WhatsApp Cloud API (DESIGN §7).
WHATSAPP_API_URL = os.getenv("WHATSAPP_API_URL", "https://graph.facebook.com/v21.0").rstrip("/")
WHATSAPP_ACCESS_TOKEN = envsecret("WHATSAPP_ACCESS_TOKEN")
WHATSAPP_APP_SECRET = envsecret("WHATSAPP_APP_SECRET")
WHATSAPP_VERIFY_TOKEN = envsecret("WHATSAPP_VERIFY_TOKEN")
WHATSAPP_TIMEOUT_SECONDS = float(os.getenv("WHATSAPP_TIMEOUT_SECONDS", "10"))
WHATSAPP_MAX_BODY_BYTES = envint("WHATSAPP_MAX_BODY_BYTES", str(1024 * 1024))

# Optional LLM helper (any OpenAI-compatible server).
OPENAI_API_KEY = envsecret("OPENAI_API_KEY")
OPENAI_BASE_URL = os.getenv("OPENAI_BASE_URL") or None
OPENAI_MODEL = os.getenv("OPENAI_MODEL", "gpt-4o-mini")
OPENAI_TIMEOUT_SECONDS = float(os.getenv("OPENAI_TIMEOUT_SECONDS", "4"))

# Booking and conversation policy.
SOPHIA_HOLD_MINUTES = envint("SOPHIA_HOLD_MINUTES", "5")
SOPHIA_MIN_NOTICE_MINUTES = envint("SOPHIA_MIN_NOTICE_MINUTES", "60")
SOPHIA_SESSION_IDLE_MINUTES = envint("SOPHIA_SESSION_IDLE_MINUTES", "30")
SOPHIA_RATE_LIMIT_PER_MINUTE = envint("SOPHIA_RATE_LIMIT_PER_MINUTE", "10")
# A bot turn taking longer than this is stopped and its message set aside for staff.
SOPHIA_TURN_BUDGET_SECONDS = float(os.getenv("SOPHIA_TURN_BUDGET_SECONDS", "20"))
SOPHIA_SLOT_DAYS_AHEAD = envint("SOPHIA_SLOT_DAYS_AHEAD", "21")
# Outbound HTTP inside a database transaction (bot.network): "raise" (tests) or "log".
SOPHIA_NETWORK_GUARD = os.getenv("SOPHIA_NETWORK_GUARD", "log")
# Turns a worker process runs at once (threads); 0 sizes it to the machine.
SOPHIA_WORKER_CONCURRENCY = envint("SOPHIA_WORKER_CONCURRENCY", "0")
# Worker processes `run_worker` starts and supervises; 0 sizes it to the machine (one per CPU).
SOPHIA_WORKER_PROCESSES = envint("SOPHIA_WORKER_PROCESSES", "0")
# The approved WhatsApp template telling a patient an agenda change cancelled their appointment
# (used outside the 24-hour window); body parameters: first name, date, time, doctor.
SOPHIA_CANCEL_TEMPLATE = os.getenv("SOPHIA_CANCEL_TEMPLATE", "cita_cancelada_reagendar")
SOPHIA_CANCEL_TEMPLATE_LANGUAGE = os.getenv("SOPHIA_CANCEL_TEMPLATE_LANGUAGE", "es")

# Logs: JSON lines (LOG_FORMAT=plain for a human-readable console). The MaskDigits filter sits
# on the handler, so every record — any logger, daphne's access log included — is masked.
LOG_FORMAT = os.getenv("LOG_FORMAT", "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "sophia_web.logging.ContextFilter"},
        "mask": {"()": "sophia_web.logging.MaskDigits"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "sophia_web.logging.SophiaJsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain" if LOG_FORMAT == "plain" else "json",
            "filters": ["context", "mask"],
        }
    },
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own handlers would write unmasked lines: everything goes through root.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        "django_tasks_db": {"level": os.getenv("TASKS_LOG_LEVEL", "WARNING")},
        # Django's own task signals: two INFO lines per task (RUNNING, SUCCESSFUL), i.e. per
        # turn, each formatted and masked in the worker; a failed task still logs an ERROR.
        "django.tasks": {"level": os.getenv("TASKS_LOG_LEVEL", "WARNING")},
        # One INFO line per outbound HTTP request (two per turn) says less than bot.whatsapp's
        # own lines; failures still come through as warnings.
        "httpx": {"level": os.getenv("HTTPX_LOG_LEVEL", "WARNING")},
        "httpcore": {"level": "WARNING"},
    },
}

# The embedded demo (no Redis) runs the worker in another process: it relays live events to the
# web process at SOPHIA_LIVE_RELAY_URL; the web process accepts them when SOPHIA_LIVE_RELAY is on.
SOPHIA_LIVE_RELAY = envbool("SOPHIA_LIVE_RELAY", "False")
SOPHIA_LIVE_RELAY_URL = os.getenv("SOPHIA_LIVE_RELAY_URL", "")

# The demo's WhatsApp simulator (/simulator/): on in DEBUG or when asked for explicitly.
SOPHIA_SIMULATOR = envbool("SOPHIA_SIMULATOR", "False")

# --- Integrations (issue 10): JSON API, outgoing webhooks, metrics, retention ------------------
INSTALLED_APPS += [
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "integrations",
]
# First, so it times and tags (request id) everything after it.
MIDDLEWARE.insert(0, "sophia_web.observability.request_observability")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["integrations.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["integrations.api.auth.HasApiKey"],
    "DEFAULT_THROTTLE_CLASSES": ["integrations.api.auth.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": os.getenv("SOPHIA_API_RATE", "120/min")},
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "integrations.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sophia API",
    "DESCRIPTION": "Appointments of one clinic, for the clinic's own systems (API key).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# /metrics: a bearer token; without one, only private and loopback addresses may scrape.
METRICS_TOKEN = envsecret("METRICS_TOKEN")

# Outgoing webhooks: plain http:// endpoints only when allowed (tests, a private network).
SOPHIA_WEBHOOKS_ALLOW_HTTP = envbool("SOPHIA_WEBHOOKS_ALLOW_HTTP", str(DEBUG))
# ... and endpoints on loopback/private/link-local addresses (SSRF) only when allowed: the demo
# and tests post to receivers on this machine.
SOPHIA_WEBHOOKS_ALLOW_PRIVATE = envbool("SOPHIA_WEBHOOKS_ALLOW_PRIVATE", str(DEBUG))
SOPHIA_WEBHOOK_TIMEOUT_SECONDS = float(os.getenv("SOPHIA_WEBHOOK_TIMEOUT_SECONDS", "10"))
# A worker killed mid-request leaves its attempt leased this long; then another worker redoes it.
SOPHIA_WEBHOOK_LEASE_SECONDS = float(os.getenv("SOPHIA_WEBHOOK_LEASE_SECONDS", "60"))

# Retention (periodic purge): raw WhatsApp payloads, finished task results, webhook deliveries.
SOPHIA_RAW_WEBHOOK_KEEP_DAYS = envint("SOPHIA_RAW_WEBHOOK_KEEP_DAYS", "30")
SOPHIA_TASK_RESULTS_KEEP_HOURS = envint("SOPHIA_TASK_RESULTS_KEEP_HOURS", "6")
SOPHIA_WEBHOOK_DELIVERIES_KEEP_DAYS = envint("SOPHIA_WEBHOOK_DELIVERIES_KEEP_DAYS", "30")
SOPHIA_IDEMPOTENCY_KEEP_HOURS = envint("SOPHIA_IDEMPOTENCY_KEEP_HOURS", "24")

# Production over HTTPS (TLS at nginx or a load balancer that sets X-Forwarded-Proto):
# `manage.py check --deploy` is clean with SOPHIA_HTTPS=True. Off by default (the demo, tests).
SOPHIA_HTTPS = envbool("SOPHIA_HTTPS", "False")
if SOPHIA_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Probes and Prometheus talk to the containers directly over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^health/$", r"^api/v1/health/", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", str(60 * 60 * 24 * 365))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", "True")
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "True")
