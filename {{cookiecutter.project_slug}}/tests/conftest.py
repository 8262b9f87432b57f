"""Start two real redis-server processes on temporary unix sockets.

The tests use the project's own Redis configs (deploy/redis/) where they
exist, and point both cache aliases at them for the whole session. They need
no .env: the secret is a throwaway one too.
"""

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
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


def load_local_stack():
    """deploy/local_stack.py: its PostgreSQL helpers pick the account and make the cluster's directories."""
    sys.path.insert(0, str(ROOT / "deploy"))
    spec = importlib.util.spec_from_file_location("local_stack", ROOT / "deploy" / "local_stack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """With PostgreSQL and no DATABASE_URL, a throwaway cluster of the newest
    PostgreSQL installed (deploy/local_stack.py's postgres_bindir: 15 on Debian 12,
    17 on Debian 13, 16 on CI's Ubuntu) on a unix socket in a temporary directory
    (no TCP, fsync off), so `make test` and CI need no running stack.
    pytest-django then creates its test database there."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if not database["ENGINE"].endswith("postgresql") or os.environ.get("DATABASE_URL"):
        yield
        return
    stack = load_local_stack()
    try:
        bindir = stack.postgres_bindir()
    except stack.StackError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    # A short path (unix sockets), open to the cluster's account when that is not you.
    directory = Path(tempfile.mkdtemp(prefix="pgtest-"))
    directory.chmod(0o755)
    account = stack.cluster_account()
    data, sockets = directory / "data", directory / "run"
    for path in (data, sockets):
        stack.own_dir(path, account)
    initdb = [bindir / "initdb", "-D", data, "-U", "test", "--auth-local=trust", "--auth-host=reject"]
    subprocess.run(stack.as_cluster_account(initdb), check=True, stdout=subprocess.DEVNULL)
    server = [bindir / "postgres", "-D", data, "-c", "listen_addresses=",
              "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off"]  # fmt: skip
    process = subprocess.Popen(stack.as_cluster_account(server), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        ready = [bindir / "pg_isready", "-q", "-h", sockets, "-U", "test", "-d", "postgres"]
        deadline = time.monotonic() + 30
        while subprocess.run(ready).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the tests' PostgreSQL did not start")
            time.sleep(0.1)
        database.update(HOST=str(sockets), PORT="", USER="test", PASSWORD="", NAME="test")
        yield
    finally:
        process.send_signal(signal.SIGINT)  # a fast shutdown
        process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


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
