"""Read settings from the environment, after loading the project's .env file.

A dozen plain lines instead of a dependency: the file is KEY=VALUE lines that
the post-gen hook and deploy/install.sh write, and variables already set in the
environment win over the file (so tests and `make check` can override them).
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit


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
