"""Start two real redis-server processes on temporary unix sockets.

The tests use the project's own Redis configs (deploy/redis/) where they
exist, and point both cache aliases at them for the whole session. They need
no .env: the secret is a throwaway one too.
"""

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """A throwaway secret for the whole run: a clone or CI has no .env, and the
    tests never need the developer's key."""
    from django.conf import settings

    settings.SECRET_KEY = "test-only-" + secrets.token_urlsafe(40)


def redis_ping(path):
    try:
        with redis.Redis(unix_socket_path=str(path), socket_timeout=1) as client:
            return client.ping()
    except redis.RedisError:
        return False


class RedisServer:
    def __init__(self, name, directory):
        self.name = name
        self.dir = directory
        self.socket = directory / f"redis-{name}.sock"
        self.url = f"unix://{self.socket}?db=0"
        config = ROOT / "deploy" / "redis" / f"{name}.conf"
        args = [str(config)] if config.exists() else ["--port", "0", "--save", ""]
        self.process = subprocess.Popen(
            [shutil.which("redis-server"), *args, "--unixsocket", str(self.socket), "--dir", str(directory)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_ping(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server for {name} did not start")
            time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_servers(tmp_path_factory):
    if not shutil.which("redis-server"):
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    directory = tmp_path_factory.mktemp("redis")
    servers = {name: RedisServer(name, directory) for name in ("cache", "sessions")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(autouse=True)
def _use_test_redis(redis_servers, settings):
    """Point the cache aliases at the test servers and start each test empty."""
    # Tests run without TLS.
    settings.SECURE_SSL_REDIRECT = False
    # No collectstatic before tests: plain storage needs no manifest.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.CACHES = {
        alias: {**settings.CACHES[alias], "LOCATION": redis_servers[name].url}
        for alias, name in (("default", "cache"), ("sessions", "sessions"))
    }
    from django_redis import get_redis_connection

    for alias in ("default", "sessions"):
        get_redis_connection(alias).flushdb()
    yield


@pytest.fixture
def cache_redis():
    from django_redis import get_redis_connection

    return get_redis_connection("default")


@pytest.fixture
def sessions_redis():
    from django_redis import get_redis_connection

    return get_redis_connection("sessions")
