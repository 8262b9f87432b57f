"""Read settings from the environment, after loading the project's .env file.

A dozen plain lines instead of a dependency: the file is KEY=VALUE lines that
the post-gen hook and deploy/install.sh write, and variables already set in the
environment win over the file (so tests and `make check` can override them).
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an env file (blank and `#` lines skipped, quotes stripped).

    The one .env parser of the project: deploy/local_stack.py uses it too.
    """
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def load_env_file(path: Path) -> None:
    for key, value in read_env_file(path).items():
        os.environ.setdefault(key, value)


def get_str(key: str, default: str = "") -> str:
    return os.environ.get(key, default)


def get_bool(key: str, default: bool = False) -> bool:
    value = os.environ.get(key)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def get_list(key: str, default: str = "") -> list[str]:
    return [item.strip() for item in get_str(key, default).split(",") if item.strip()]


def database_from_url(url: str, base_dir: Path) -> dict:
    """Turn sqlite:///path or postgres://user:pass@host:port/name?options into DATABASES["default"].

    postgres:///name?host=/var/run/postgresql is a unix socket (the directory
    holding it) with peer authentication: no user, no password. Every other
    query parameter (sslmode=verify-full, sslrootcert=/path, ...) goes to
    psycopg as a connection option.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///db.sqlite3 is relative to the project, sqlite:////abs/path absolute.
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": base_dir / parts.path[1:]}
    if parts.scheme in {"postgres", "postgresql"}:
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        # An empty host means the default unix socket, like psql; ?host= names its directory.
        host = unquote(parts.hostname or "") or options.pop("host", "")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path[1:]),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": host,
            "PORT": str(parts.port or ""),
            "OPTIONS": options,
        }
    raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use sqlite:// or postgres://)")


def redis_cache(prefix: str, url: str, options: dict) -> dict:
    """LOCATION and OPTIONS of a django-redis cache alias whose variables start with prefix.

    url is unix://path?db=N, redis://[user:password@]host:port/N or rediss://...
    (TLS, verified against REDIS_TLS_CA_FILE, else the system CAs: never off).
    With {prefix}_SENTINELS=host:port,... and {prefix}_SENTINEL_SERVICE the
    primary is found through Redis Sentinel, and url gives only the scheme,
    user, password and db. Every read and write goes to the primary: a replica
    may lag behind, and a session read must see the write that made it.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"unix", "redis", "rediss"}:
        raise ValueError(
            f"{prefix}_URL: unsupported URL {parts.scheme}://... "
            "(use unix:///path?db=N, redis://[user:password@]host:port/N or rediss://...)"
        )
    tls = {}
    if parts.scheme == "rediss":
        ca_file = get_str("REDIS_TLS_CA_FILE")
        if ca_file and not Path(ca_file).is_file():
            raise ValueError(f"REDIS_TLS_CA_FILE: {ca_file} is not a file (name the CA that signed Redis' certificate)")
        tls = {"ssl_cert_reqs": "required", **({"ssl_ca_certs": ca_file} if ca_file else {})}
    sentinels = get_list(f"{prefix}_SENTINELS")
    service = get_str(f"{prefix}_SENTINEL_SERVICE")
    if not sentinels and not service:
        return {"LOCATION": url, "OPTIONS": {**options, **({"CONNECTION_POOL_KWARGS": tls} if tls else {})}}
    if not sentinels or not service:
        raise ValueError(
            f"{prefix}_SENTINELS and {prefix}_SENTINEL_SERVICE go together: set both "
            f"({prefix}_SENTINELS=host:port,host:port,host:port and {prefix}_SENTINEL_SERVICE=<name>) or neither"
        )
    addresses = [sentinel_address(f"{prefix}_SENTINELS", item) for item in sentinels]
    # The service name takes the host's place; db, user and password stay.
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{service}" if userinfo else service
    location = urlunsplit(("redis", netloc, parts.path or "/0", "", ""))
    sentinel_kwargs = {
        "socket_timeout": options.get("SOCKET_TIMEOUT"),
        "socket_connect_timeout": options.get("SOCKET_CONNECT_TIMEOUT"),
    }
    if get_str("REDIS_SENTINEL_PASSWORD"):
        sentinel_kwargs["password"] = get_str("REDIS_SENTINEL_PASSWORD")
    if tls:
        # rediss://: the primaries and the sentinels speak TLS.
        sentinel_kwargs.update(ssl=True, **tls)
        tls = {"ssl": True, **tls}
    return {
        # A list of one URL: django-redis's SentinelClient would otherwise read from replicas.
        "LOCATION": [location],
        "OPTIONS": {
            **options,
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
            "SENTINELS": addresses,
            "SENTINEL_KWARGS": sentinel_kwargs,
            **({"CONNECTION_POOL_KWARGS": tls} if tls else {}),
        },
    }


def sentinel_address(variable: str, item: str) -> tuple[str, int]:
    """host:port of one sentinel, or a one-line error naming the variable, the value and the fix."""
    host, _, port = item.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{variable}: {item!r} has no port: write host:port,host:port,... (26379 is the usual one)")
    return (host, int(port))
