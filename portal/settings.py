"""labcloud settings. Every deploy-time knob comes from the environment (see .env.example)."""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.utils.translation import gettext_lazy as _

from portal.files import private_path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("LABCLOUD_VAR_DIR", BASE_DIR / "var"))


# var/ is the portal user's alone (0700): its database holds the sessions, its files the secret key and the
# images. Folders made before are tightened at the next start.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
private_path(VAR_DIR, 0o700)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _secret_key() -> str:
    """SECRET_KEY from the environment, else generated once and kept in var/secret_key."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "portal",
    "vms",
    "images",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "portal.middleware.ActiveTenantMiddleware",
    "portal.middleware.ApiProblemMiddleware",
]

ROOT_URLCONF = "portal.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.tenancy",
                "vms.context_processors.notifications",
            ],
        },
    },
]

WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{VAR_DIR / 'labcloud.sqlite3'}",
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "0")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Wait for the write lock instead of failing at once when the web and worker write together.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # SQLite has no SELECT … FOR UPDATE: take the write lock when a transaction begins, so concurrent
    # reservations and uploads wait their turn instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # Write-ahead log: readers never wait for the writer, and commits need no fsync of the main file
    # (synchronous=NORMAL is durable across application crashes; a power cut may lose the last commits).
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    # Tests use a database file too (one per test process), not SQLite's in-memory database: with that,
    # the live server's threads would share the test's single connection, and concurrent requests
    # (a browser cancelling an upload while a chunk is in flight) would interleave in one transaction.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    # The database file is made 0600 before SQLite opens it (SQLite gives its -wal and -shm files the same
    # mode); one made before is tightened.
    _database = Path(DATABASES["default"]["NAME"])
    if _database.parent.is_dir() and not _database.exists():
        os.close(os.open(_database, os.O_WRONLY | os.O_CREAT, 0o600))  # an empty file is an empty database
    for _suffix in ("", "-wal", "-shm"):
        private_path(Path(f"{_database}{_suffix}"), 0o600)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Collected static files; outside var/ (0700) when nginx, as another user, serves them from disk.
STATIC_ROOT = Path(os.environ.get("LABCLOUD_STATIC_ROOT", VAR_DIR / "static"))
WHITENOISE_USE_FINDERS = True

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # Several portals (or concurrent test runs) can share one Redis with different prefixes.
        # A socket's receive is a blocking pop of up to 5 s on the server (channels_redis' brpop_timeout);
        # redis-py 8 reads with a 5 s socket timeout by default, which lost that race on every quiet socket
        # (the consumer died, the page saw a 1011 close). Reads wait longer than the pop.
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
            "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "asgi"),
        },
    }
}
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "celery")
# Image work (imports, inspection and conversion, capture, copies to hosts) goes to the queue
# "<CELERY_QUEUE>.images", read by a worker of its own: instance actions never wait behind it
# (portal.celery.route_task; `manage.py serve` starts both workers).
CELERY_TASK_ROUTES = ("portal.celery.route_task",)
# Worker processes (prefork pool) of `manage.py serve`'s two workers.
LABCLOUD_WORKER_CONCURRENCY = int(os.environ.get("WORKER_CONCURRENCY", "2"))
LABCLOUD_IMAGE_WORKER_CONCURRENCY = int(os.environ.get("IMAGE_WORKER_CONCURRENCY", "2"))
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "purge-stale-uploads": {"task": "images.tasks.purge_stale_uploads_task", "schedule": 3600.0},
}
# Uploads nobody continued for this long are failed and their partial files removed.
LABCLOUD_IMAGE_UPLOAD_STALE_HOURS = int(os.environ.get("IMAGE_UPLOAD_STALE_HOURS", "24"))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["portal.api.permissions.IsAuthenticatedWithScope"],
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "portal.api.ordering.StrictOrderingFilter",
    ],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("API_THROTTLE_ANON", "60/min"),
        "user": os.environ.get("API_THROTTLE_USER", "3000/min"),
    },
    "EXCEPTION_HANDLER": "portal.api.exceptions.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "portal.api.base.ProblemAutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "labcloud API",
    "DESCRIPTION": "REST API of the labcloud portal. Errors are RFC 7807 problem+json documents.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The system's fonts: the portal's ReDoc page loads none from the internet (templates/drf_spectacular).
    "REDOC_UI_SETTINGS": {
        "theme": {
            "typography": {
                "fontFamily": "system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', sans-serif",
                "headings": {"fontFamily": "system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', sans-serif"},
                "code": {"fontFamily": "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"},
            }
        }
    },
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.api.schema_hooks.declare_input_rules",
    ],
}

# Default quota of a new tenant; -1 means unlimited.
LABCLOUD_DEFAULT_QUOTA = {
    "instances": int(os.environ.get("QUOTA_INSTANCES", "10")),
    "vcpus": int(os.environ.get("QUOTA_VCPUS", "20")),
    "ram_mib": int(os.environ.get("QUOTA_RAM_MIB", "51200")),
    "disk_gib": int(os.environ.get("QUOTA_DISK_GIB", "500")),
    "snapshots": int(os.environ.get("QUOTA_SNAPSHOTS", "20")),
    # What snapshots hold on the hosts, measured there (old disk blocks, saved memory): docs/quotas.md.
    "snapshot_mib": int(os.environ.get("QUOTA_SNAPSHOT_MIB", "102400")),
    "images": int(os.environ.get("QUOTA_IMAGES", "10")),
    "image_storage_gib": int(os.environ.get("QUOTA_IMAGE_STORAGE_GIB", "100")),
    # As Neutron's defaults; every tenant's "default" group counts (docs/networking.md).
    "security_groups": int(os.environ.get("QUOTA_SECURITY_GROUPS", "10")),
    "security_group_rules": int(os.environ.get("QUOTA_SECURITY_GROUP_RULES", "100")),
}
LABCLOUD_DEFAULT_LIBVIRT_URI = os.environ.get("LABCLOUD_DEFAULT_LIBVIRT_URI", "qemu:///system")

# Largest request body the web server accepts (checked before Django spools it to disk): the
# browser's plain upload form sends a file of up to 2 GiB in one request; API clients use chunks.
LABCLOUD_MAX_REQUEST_BYTES = int(os.environ.get("LABCLOUD_MAX_REQUEST_BYTES", str(2 * 1024**3 + 1024**2)))

# Images: where uploaded files live, and what the portal accepts.
LABCLOUD_IMAGE_STORE = Path(os.environ.get("LABCLOUD_IMAGE_STORE", VAR_DIR / "images"))
LABCLOUD_IMAGE_MAX_UPLOAD_BYTES = int(os.environ.get("IMAGE_MAX_UPLOAD_BYTES", str(64 * 1024**3)))
LABCLOUD_IMAGE_MAX_VIRTUAL_SIZE = int(os.environ.get("IMAGE_MAX_VIRTUAL_SIZE", str(2 * 1024**4)))
# Hosts the worker may download images from (URL import); empty: any host. Comma-separated.
LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS = env_list("IMAGE_IMPORT_ALLOWED_HOSTS", "")
# A URL import must finish within IMAGE_IMPORT_TIMEOUT_SECONDS and receive at least IMAGE_IMPORT_MIN_RATE_BYTES
# per second, measured over each IMAGE_IMPORT_RATE_WINDOW_SECONDS (also while waiting for the server's
# answer); otherwise it fails ("too slow", "took too long"), so a trickling server cannot hold a worker.
LABCLOUD_IMAGE_IMPORT_TIMEOUT = float(os.environ.get("IMAGE_IMPORT_TIMEOUT_SECONDS", str(6 * 3600)))
LABCLOUD_IMAGE_IMPORT_MIN_RATE = int(os.environ.get("IMAGE_IMPORT_MIN_RATE_BYTES", str(64 * 1024)))
LABCLOUD_IMAGE_IMPORT_RATE_WINDOW = float(os.environ.get("IMAGE_IMPORT_RATE_WINDOW_SECONDS", "60"))
# Limits of qemu-img runs (as Nova and Glance do for qemu-img info). Conversion gets more address space:
# its I/O thread pool reserves 8 MiB of stack per thread and grows under load.
LABCLOUD_QEMU_IMG_LIMITS = {
    "address_space_bytes": int(os.environ.get("QEMU_IMG_MAX_MEMORY_BYTES", str(1024**3))),
    "convert_address_space_bytes": int(os.environ.get("QEMU_IMG_CONVERT_MAX_MEMORY_BYTES", str(4 * 1024**3))),
    "info_cpu_seconds": int(os.environ.get("QEMU_IMG_INFO_CPU_SECONDS", "30")),
    "convert_cpu_seconds": int(os.environ.get("QEMU_IMG_CONVERT_CPU_SECONDS", "3600")),
}

# --- instances ---
# Every libvirt object the portal creates (domains, volumes) is named with this prefix.
LABCLOUD_DOMAIN_PREFIX = os.environ.get("LABCLOUD_DOMAIN_PREFIX", "labcloud-")
# Host folder the guests' serial consoles are logged to (on the instance's host).
LABCLOUD_SERIAL_LOG_DIR = os.environ.get("LABCLOUD_SERIAL_LOG_DIR", "/var/log/libvirt/qemu")
LABCLOUD_SHUTDOWN_TIMEOUT = int(os.environ.get("INSTANCE_SHUTDOWN_TIMEOUT", "60"))
# Live migration: the job is aborted after MIGRATION_TIMEOUT_SECONDS (the guest stays on its source), or,
# with MIGRATION_POST_COPY=1, switched to post-copy then (it finishes whatever the guest writes; a link
# failure during post-copy loses the guest). Without post-copy, auto-converge (throttling a guest that dirties
# memory faster than the link) is on. MIGRATION_MAX_DOWNTIME_MS: the pause allowed at the switch (0: libvirt's).
LABCLOUD_MIGRATION_TIMEOUT = float(os.environ.get("MIGRATION_TIMEOUT_SECONDS", "600"))
LABCLOUD_MIGRATION_POST_COPY = os.environ.get("MIGRATION_POST_COPY", "0") == "1"
LABCLOUD_MIGRATION_MAX_DOWNTIME_MS = int(os.environ.get("MIGRATION_MAX_DOWNTIME_MS", "0"))
# MiB/s a migration may use on the link (0: all it gets).
LABCLOUD_MIGRATION_BANDWIDTH_MIB = int(os.environ.get("MIGRATION_BANDWIDTH_MIB", "0"))
LABCLOUD_MAX_BATCH = int(os.environ.get("INSTANCE_MAX_BATCH", "50"))
LABCLOUD_USER_DATA_MAX_BYTES = int(os.environ.get("INSTANCE_USER_DATA_MAX_BYTES", str(64 * 1024)))
# A libvirt host whose storage pool has less than this share (percent of its capacity) free takes
# no new instances, extra disks, disk growth or snapshots, whatever the nominal sizes say.
LABCLOUD_POOL_MIN_FREE_PERCENT = float(os.environ.get("POOL_MIN_FREE_PERCENT", "10"))
# The web process freezes what start-up made and collects its young generation after this many
# allocations (CPython: 700); 0 leaves the collector as it is. See portal/gc_tuning.py.
LABCLOUD_GC_THRESHOLD = int(os.environ.get("WEB_GC_THRESHOLD", "50000"))
# A running operation without a heartbeat for this long is re-queued (its worker died).
LABCLOUD_OPERATION_STALE_SECONDS = int(os.environ.get("OPERATION_STALE_SECONDS", "120"))
# Celery time limits, seconds. At a task's soft limit it gets SoftTimeLimitExceeded and fails its operation
# cleanly (an image is rejected: no file, no quota); TASK_TIME_LIMIT_GRACE_SECONDS later the worker kills it.
# Instance operations: a launch may first copy its image to the host or to Glance, and wait for Nova.
LABCLOUD_TASK_TIME_LIMIT_GRACE = int(os.environ.get("TASK_TIME_LIMIT_GRACE_SECONDS", "60"))
LABCLOUD_INSTANCE_TASK_TIME_LIMIT = int(os.environ.get("INSTANCE_TASK_TIME_LIMIT_SECONDS", str(3 * 3600)))
# Image work: inspection and conversion (qemu-img: CONVERT_CPU_SECONDS of CPU, plus I/O), capture, copies to hosts.
LABCLOUD_IMAGE_TASK_TIME_LIMIT = int(os.environ.get("IMAGE_TASK_TIME_LIMIT_SECONDS", str(4 * 3600)))
# A URL import: the download deadline and a little more.
LABCLOUD_IMAGE_IMPORT_TASK_TIME_LIMIT = int(
    os.environ.get("IMAGE_IMPORT_TASK_TIME_LIMIT_SECONDS", str(int(LABCLOUD_IMAGE_IMPORT_TIMEOUT) + 300))
)
# Every other task (housekeeping, quota and flavor pushes to clouds, Glance visibility).
CELERY_TASK_SOFT_TIME_LIMIT = int(os.environ.get("TASK_TIME_LIMIT_SECONDS", "600"))
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + LABCLOUD_TASK_TIME_LIMIT_GRACE
CELERY_BEAT_SCHEDULE["recover-stale-operations"] = {
    "task": "vms.tasks.recover_stale_operations_task",
    "schedule": float(os.environ.get("OPERATION_RECOVERY_INTERVAL", "30")),
}

# Sign-in throttling (dashboard and admin site; docs/access-control.md): this many failed sign-ins
# within LOGIN_FAILURE_WINDOW_MINUTES lock the account (from every address), or the client address
# (for every account), until enough of them are older than the window. 0 turns that limit off.
LOGIN_FAILURES_PER_ACCOUNT = int(os.environ.get("LOGIN_FAILURES_PER_ACCOUNT", "5"))
LOGIN_FAILURES_PER_ADDRESS = int(os.environ.get("LOGIN_FAILURES_PER_ADDRESS", "20"))
LOGIN_FAILURE_WINDOW_MINUTES = int(os.environ.get("LOGIN_FAILURE_WINDOW_MINUTES", "15"))
# true behind nginx: `manage.py serve` runs daphne with --proxy-headers, so the client address (audit trail,
# the per-address limit above) comes from X-Forwarded-For, which nginx must set to $remote_addr.
LABCLOUD_PROXY_HEADERS = env_bool("LABCLOUD_PROXY_HEADERS", False)

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "SAMEORIGIN"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- OpenStack clouds ---
# Fernet key (python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())") that
# encrypts the clouds' credentials in the database; empty: a key derived from SECRET_KEY (changing SECRET_KEY
# then makes the stored credentials unreadable: enter them again).
LABCLOUD_CREDENTIALS_KEY = os.environ.get("CLOUD_CREDENTIALS_KEY", "")
# Seconds per HTTP request to a cloud, and between polls while a task waits for Nova.
LABCLOUD_CLOUD_TIMEOUT = float(os.environ.get("CLOUD_TIMEOUT", "30"))
LABCLOUD_CLOUD_POLL_SECONDS = float(os.environ.get("CLOUD_POLL_SECONDS", "0.5"))
# Seconds a launch waits for Nova to make the server ACTIVE.
LABCLOUD_CLOUD_BUILD_TIMEOUT = float(os.environ.get("CLOUD_BUILD_TIMEOUT", "600"))

# --- watcher ---
# manage.py watch_hosts: seconds between full reconciles of every host (domain list → instance states,
# unmanaged domains, new/removed hosts) and between capacity refreshes. Events arrive in between.
WATCHER_RECONCILE_SECONDS = float(os.environ.get("WATCHER_RECONCILE_SECONDS", "30"))
WATCHER_CAPACITY_SECONDS = float(os.environ.get("WATCHER_CAPACITY_SECONDS", "60"))
# Instance metrics (docs/metrics.md): the watcher samples every running instance's CPU, memory, disk and
# network counters every METRICS_INTERVAL_SECONDS (0 turns sampling off) and keeps the newest METRICS_HISTORY
# points per instance (240 × 15 s = one hour).
# OpenStack clouds have no events: the watcher polls each for changed servers (Nova changes-since) this often,
# asking for a window that overlaps the previous poll by WATCHER_CLOUD_POLL_OVERLAP_SECONDS (clock skew).
WATCHER_CLOUD_POLL_SECONDS = float(os.environ.get("WATCHER_CLOUD_POLL_SECONDS", "5"))
LABCLOUD_CLOUD_POLL_OVERLAP_SECONDS = float(os.environ.get("WATCHER_CLOUD_POLL_OVERLAP_SECONDS", "30"))
METRICS_INTERVAL_SECONDS = float(os.environ.get("METRICS_INTERVAL_SECONDS", "15"))
METRICS_HISTORY = max(2, int(os.environ.get("METRICS_HISTORY", "240")))
# GET /metrics (Prometheus): cloud admins (session or API token) and scrapers sending
# "Authorization: Bearer <METRICS_TOKEN>". Empty: no scraper token.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# --- end watcher ---

# --- console ---
# manage.py consoleproxy (websockify + the portal's token plugin) listens here; keep it on loopback
# and publish it through the portal's reverse proxy (TLS) under CONSOLE_PUBLIC_URL.
CONSOLE_PROXY_HOST = os.environ.get("CONSOLE_PROXY_HOST", "127.0.0.1")
CONSOLE_PROXY_PORT = int(os.environ.get("CONSOLE_PROXY_PORT", "6080"))
# The ws:// or wss:// base URL browsers connect to (the token is appended as ?token=…).
CONSOLE_PUBLIC_URL = os.environ.get("CONSOLE_PUBLIC_URL", "ws://127.0.0.1:6080")
CONSOLE_TOKEN_TTL_SECONDS = int(os.environ.get("CONSOLE_TOKEN_TTL_SECONDS", "60"))
CONSOLE_MAX_SESSION_SECONDS = int(os.environ.get("CONSOLE_MAX_SESSION_SECONDS", "14400"))
# Seconds between the proxy's checks that a live session is still allowed (access, instance state).
CONSOLE_RECHECK_SECONDS = float(os.environ.get("CONSOLE_RECHECK_SECONDS", "2"))


def _default_console_origins() -> list[str]:
    port = os.environ.get("LABCLOUD_PORT", "8000")
    origins = list(CSRF_TRUSTED_ORIGINS)
    for host in ALLOWED_HOSTS:
        if host == "*" or host.startswith("."):
            continue  # wildcards: list the origins explicitly in CONSOLE_ALLOWED_ORIGINS
        name = f"[{host}]" if ":" in host else host
        origins += [f"http://{name}:{port}", f"https://{name}", f"http://{name}"]
    return origins


# Origin headers the console proxy accepts (scheme://host[:port], exact match).
CONSOLE_ALLOWED_ORIGINS = env_list("CONSOLE_ALLOWED_ORIGINS", "") or _default_console_origins()
# --- end console ---
