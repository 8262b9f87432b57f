"""Django settings for {{ cookiecutter.project_name }}.

One settings module for every place the project runs. Everything that differs
between the local stack, the tests and the server comes from the environment,
loaded from the .env file next to manage.py (written by `make env`, which the
post-gen hook runs, or by deploy/install.sh; never committed). The defaults
are the production ones: a missing variable makes the site stricter, not looser.
"""

from pathlib import Path

from . import env

BASE_DIR = Path(__file__).resolve().parent.parent
env.load_env_file(BASE_DIR / ".env")

# Where sockets, collected static files and uploads live. The local stack uses
# the project directory; the server's env file points them into the app root.
RUN_DIR = Path(env.get_str("RUN_DIR", str(BASE_DIR / "run")))
STATIC_ROOT = Path(env.get_str("STATIC_ROOT", str(BASE_DIR / "static")))
MEDIA_ROOT = Path(env.get_str("MEDIA_ROOT", str(BASE_DIR / "media")))

SECRET_KEY = env.get_str("DJANGO_SECRET_KEY")
DEBUG = env.get_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env.get_list("DJANGO_ALLOWED_HOSTS", "{{ cookiecutter.domain_name }}")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A sessions Redis outage is a 503 page, not a 500 or a logout.
    "{{ cookiecutter.project_slug }}.middleware.RedisUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "{{ cookiecutter.project_slug }}.urls"
WSGI_APPLICATION = "{{ cookiecutter.project_slug }}.wsgi.application"

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

{% if cookiecutter.database == "postgresql" -%}
# PostgreSQL: locally the stack's own cluster (make up) on the unix socket in
# run/postgres/, no TCP, no password. The server's .env sets DATABASE_URL to
# Debian's cluster (postgres:///name?host=/var/run/postgresql, peer
# authentication); a managed database is one DATABASE_URL away: it always wins.
DEFAULT_DATABASE_URL = f"postgres://{{ cookiecutter.project_slug }}@/{{ cookiecutter.project_slug }}?host={RUN_DIR}/postgres"
{%- else -%}
# SQLite by default; set DATABASE_URL=postgres://user:password@host:5432/name
# (or postgres:///name?host=/socket/dir) to use PostgreSQL instead.
DEFAULT_DATABASE_URL = "sqlite:///db.sqlite3"
{%- endif %}
# An empty DATABASE_URL= line counts as none.
DATABASES = {"default": env.database_from_url(env.get_str("DATABASE_URL") or DEFAULT_DATABASE_URL, BASE_DIR)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets readers run during a write; NORMAL sync is safe with WAL and
    # makes each write much cheaper. IMMEDIATE avoids "database is locked"
    # errors when two workers upgrade read transactions to writes at once.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
else:
    # Each gunicorn sync worker keeps its connection across requests (measured:
    # a new connection per request runs a read view at a third of the rate) and
    # checks it before reuse, so a restarted PostgreSQL costs a reconnect, not
    # an error. Django's psycopg pool measured no faster: a sync worker serves
    # one request at a time.
    DATABASES["default"]["CONN_MAX_AGE"] = 600
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Two Redis instances, one job each. The cache may lose anything at any time:
# its Redis evicts (allkeys-lru) and an outage is a cache miss
# (IGNORE_EXCEPTIONS). Sessions get their own Redis (noeviction, AOF), so
# cache.clear() -- a FLUSHDB -- or a full cache can never log anyone out, and
# its errors are raised, because Django's session code must see them.
# Unix socket URLs look like unix:///path/to/redis.sock?db=0. A Redis on
# another host is redis://user:password@host:port/0, or rediss://... with TLS
# (verified against REDIS_TLS_CA_FILE, else the system CAs). REDIS_*_SENTINELS
# and REDIS_*_SENTINEL_SERVICE find the primary through Redis Sentinel; see
# env.redis_cache() and docs/data-off-the-box.md.
{%- if cookiecutter.redis == "system" %}
# Debian's redis-server: one instance, the cache in db 0, the sessions in db 1.
REDIS_CACHE_URL = env.get_str("REDIS_CACHE_URL", "unix:///run/redis/redis-server.sock?db=0")
REDIS_SESSIONS_URL = env.get_str("REDIS_SESSIONS_URL", "unix:///run/redis/redis-server.sock?db=1")
{%- else %}
REDIS_CACHE_URL = env.get_str("REDIS_CACHE_URL", f"unix://{RUN_DIR}/redis-cache.sock?db=0")
REDIS_SESSIONS_URL = env.get_str("REDIS_SESSIONS_URL", f"unix://{RUN_DIR}/redis-sessions.sock?db=0")
{%- endif %}
REDIS_OPTIONS = {
    # A local socket answers in microseconds; a second means Redis is stuck.
    "SOCKET_CONNECT_TIMEOUT": 1,
    "SOCKET_TIMEOUT": 1,
}
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "KEY_PREFIX": "{{ cookiecutter.project_slug }}",
        **env.redis_cache("REDIS_CACHE", REDIS_CACHE_URL, {**REDIS_OPTIONS, "IGNORE_EXCEPTIONS": True}),
    },
    "sessions": {
        "BACKEND": "django_redis.cache.RedisCache",
        "KEY_PREFIX": "{{ cookiecutter.project_slug }}",
        **env.redis_cache("REDIS_SESSIONS", REDIS_SESSIONS_URL, REDIS_OPTIONS),
    },
}
# Log each swallowed cache error instead of hiding the outage.
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# Django's cache and cached_db stores, made safe against Redis faults: see
# {{ cookiecutter.project_slug }}/sessions/ (an outage never deletes a session cookie; cached_db keeps
# working from the database).
SESSION_ENGINE = "{{ cookiecutter.project_slug }}.sessions.{{ cookiecutter.session_engine }}"
SESSION_CACHE_ALIAS = "sessions"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "{{ cookiecutter.timezone }}"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
MEDIA_URL = "media/"
# Hashed file names let nginx send /static/ with a one-year, immutable cache;
# the .gz and .br copies written beside them let it send them compressed
# ({{ cookiecutter.project_slug }}/storage.py).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "{{ cookiecutter.project_slug }}.storage.CompressedManifestStaticFilesStorage"},
}

# nginx terminates TLS and says so in X-Forwarded-Proto. SITE_HTTPS is on for
# the server and off for the local stack, which has no certificate; every
# other setting is the same in both places.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SITE_HTTPS = env.get_bool("SITE_HTTPS", True)
SECURE_SSL_REDIRECT = SITE_HTTPS
SESSION_COOKIE_SECURE = SITE_HTTPS
CSRF_COOKIE_SECURE = SITE_HTTPS
SECURE_HSTS_SECONDS = 31536000 if SITE_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SITE_HTTPS
# HSTS preload is opt-in: a header with `preload` lets anyone submit the
# domain to the browsers' preload list, and leaving it takes months. To opt
# in, add `preload` to the header in deploy/nginx/site.conf (nginx sends the
# header, Django's is hidden), set this to SITE_HTTPS and remove the silenced
# check below (docs/security.md).
SECURE_HSTS_PRELOAD = False
SILENCED_SYSTEM_CHECKS = ["security.W021"]
CSRF_TRUSTED_ORIGINS = env.get_list("DJANGO_CSRF_TRUSTED_ORIGINS")

ADMINS = [("{{ cookiecutter.author_name }}", "{{ cookiecutter.email }}")]
SERVER_EMAIL = env.get_str("DJANGO_SERVER_EMAIL", "root@{{ cookiecutter.domain_name }}")
DEFAULT_FROM_EMAIL = SERVER_EMAIL
# Mail (the 500 errors ADMINS gets, password resets) leaves through the SMTP
# server that EMAIL_HOST names. Without one (the local stack, a server not yet
# set up) the console backend writes each mail to the log instead.
EMAIL_HOST = env.get_str("EMAIL_HOST", "")
EMAIL_BACKEND = "django.core.mail.backends." + ("smtp.EmailBackend" if EMAIL_HOST else "console.EmailBackend")
EMAIL_PORT = int(env.get_str("EMAIL_PORT", "587"))
EMAIL_HOST_USER = env.get_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env.get_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env.get_bool("EMAIL_USE_TLS", True)
# A stuck SMTP server must not hold a gunicorn worker for long.
EMAIL_TIMEOUT = 10

# Everything goes to stderr: supervisor (local stack and server) keeps the log.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.get_str("DJANGO_LOG_LEVEL", "INFO")},
    # A Host that ALLOWED_HOSTS refuses is logged, never mailed to ADMINS:
    # anyone can send one, so each would be an email on demand.
    "loggers": {"django.security.DisallowedHost": {"handlers": ["console"], "propagate": False}},
}
