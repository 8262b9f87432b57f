"""Redis off the box: a baked project's `make up` against Redis on other
addresses (127.0.0.2, 127.0.0.3) with TLS and ACL users, and through Redis
Sentinel. Real redis-server and redis-sentinel processes (tests/remote_redis.py).

Run with -s to see the failover figures (docs/data-off-the-box.md quotes them).
"""

import itertools
import re
import threading
import time
from collections import Counter

import pytest
import remote_redis as rr
import requests
from conftest import Stack, bake, require, stop_stack

pytestmark = pytest.mark.stack

PASSWORD = "remote-redis-test-" + "pw-4k9x" * 3
REDIS_PASSWORD = "redis-" + "s3cret-" * 3


def report(message):
    print(f"\n[remote-redis] {message}", flush=True)


def set_env(project, **values):
    """Replace (or append) KEY=VALUE lines of the project's .env; a None value removes the line."""
    path = project / ".env"
    lines = [line for line in path.read_text().splitlines() if line.split("=", 1)[0] not in values]
    lines += [f"{key}={value}" for key, value in values.items() if value is not None]
    path.write_text("\n".join(lines) + "\n")


def start_remote_stack(cookies, name, **env):
    """Bake with a real .venv, point .env at remote Redis, `make up`."""
    require("redis-server")
    require("nginx")
    project = bake(cookies, venv=True, project_name=name, local_port=str(rr.free_port("127.0.0.1")))
    set_env(project, **env)
    stack = Stack(project)
    stack.make("up")
    return stack


def restart_gunicorn(stack):
    """gunicorn reads .env when its workers start: restart it after an .env change."""
    name = f"{stack.slug}:{stack.slug}-gunicorn"
    stack.supervisor().stopProcess(name)
    stack.supervisor().startProcess(name)
    rr.wait_until(lambda: healthz(stack)[0] in (200, 503), 30, "gunicorn answers again")


def healthz(stack):
    try:
        response = requests.get(f"{stack.base_url}/healthz", timeout=10)
    except requests.RequestException:
        return None, {}
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {}


def running_programs(stack):
    states = ("STARTING", "RUNNING")
    return sorted(p["name"] for p in stack.supervisor().getAllProcessInfo() if p["statename"] in states)


def log_login(stack, username, password=PASSWORD):
    session, token = stack.login_form()
    response = stack.post_login(session, token, username, password)
    assert response.status_code == 302, response.text[:300]
    return session


def session_keys(client, slug):
    return {
        key.decode().rsplit("django.contrib.sessions.cache", 1)[-1] for key in client.scan_iter(f"{slug}:*sessions*")
    }


# 1. TLS and an ACL user ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A CA, and the cache and sessions Redis with TLS only and one ACL user each, on 127.0.0.2."""
    directory = tmp_path_factory.mktemp("tls")
    ca, cert, key = rr.make_ca(directory)
    servers = {
        name: rr.TlsRedis(directory, rr.HOST_A, name, ca, cert, key, f"app-{name}", REDIS_PASSWORD)
        for name in ("cache", "sessions")
    }
    servers["ca"] = ca
    yield servers
    servers["cache"].stop()
    servers["sessions"].stop()


def test_tls_and_acl_user_serve_logins_and_name_the_failing_store(cookies_session, tls):
    started = time.monotonic()
    env = {
        "REDIS_CACHE_URL": tls["cache"].url(0),
        "REDIS_SESSIONS_URL": tls["sessions"].url(0),
        "REDIS_TLS_CA_FILE": tls["ca"],
    }
    stack = start_remote_stack(cookies_session, "Rtls", **env)
    try:
        # Only what .env points at runs here: no local Redis.
        assert running_programs(stack) == sorted([f"{stack.slug}-gunicorn", f"{stack.slug}-nginx"])
        assert not list((stack.project / "run").glob("redis-*.sock"))
        assert healthz(stack) == (200, {"status": "ok", "failed": [], "checks": {
            "database": "ok", "cache": "ok", "sessions": "ok"}})  # fmt: skip
        stack.create_admin(PASSWORD)
        session = log_login(stack, "admin")
        assert session.cookies["sessionid"] in session_keys(tls["sessions"].client(), stack.slug)
        assert session.get(f"{stack.base_url}/admin/", allow_redirects=False, timeout=10).status_code == 200
        # Connections are TLS: the server counts them on its TLS port only.
        assert tls["sessions"].client().info("clients")["connected_clients"] >= 1

        sessions = tls["sessions"]
        faults = {
            "wrong password": {"REDIS_SESSIONS_URL": sessions.url(0, password="wrong-" + REDIS_PASSWORD)},
            "unknown CA (system CAs only)": {"REDIS_TLS_CA_FILE": None},
            "plain redis:// to the TLS port": {"REDIS_SESSIONS_URL": sessions.url(0, scheme="redis")},
        }
        for fault, change in faults.items():
            set_env(stack.project, **{**env, **change})
            restart_gunicorn(stack)
            offset = len(stack.log("gunicorn.log"))
            status, body = healthz(stack)
            assert status == 503, (fault, status, body)
            assert "sessions" in body["failed"], (fault, body)
            page = session.get(f"{stack.base_url}/admin/", allow_redirects=False, timeout=10)
            assert page.status_code == 503, (fault, page.status_code)
            assert "Back in a moment" in page.text and "Traceback" not in page.text
            time.sleep(0.3)
            lines = [line for line in stack.log("gunicorn.log")[offset:].splitlines() if "/healthz 503" in line]
            assert len(lines) == 1, (fault, lines)
            assert "sessions" in lines[0] and "Error" in lines[0], (fault, lines[0])
            assert "Traceback" not in stack.log("gunicorn.log")[offset:], fault
            report(f"{fault}: /healthz {status} {body['checks']}; log: {lines[0].split('/healthz 503: ', 1)[-1]}")
        # Back to the right settings: the same cookie is still logged in.
        set_env(stack.project, **env)
        restart_gunicorn(stack)
        assert healthz(stack)[0] == 200
        assert session.get(f"{stack.base_url}/admin/", allow_redirects=False, timeout=10).status_code == 200
    finally:
        stop_stack(stack)
    report(f"TLS test took {time.monotonic() - started:.1f} s")


# 2. Sentinel ------------------------------------------------------------------------

USERS = 50


class Load:
    """Steady, bounded load: `threads` loops, each one request per `pause` s, GET path as the given users.

    Records (start, end, status) of every request; a 200 without the admin
    index, or a redirect to the login page, counts as "logged-out".
    """

    def __init__(self, stack, sessions, path="/admin/", threads=6, pause=0.05):
        self.stack, self.sessions, self.path = stack, sessions, path
        self.records, self.stopping = [], threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(i, threads, pause)) for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def loop(self, index, step, pause):
        sessions = self.sessions[index::step] or [requests.Session()]
        for n in itertools.count():
            if self.stopping.is_set():
                return
            session = sessions[n % len(sessions)]
            started = time.monotonic()
            try:
                response = session.get(f"{self.stack.base_url}{self.path}", allow_redirects=False, timeout=10)
                status = response.status_code
                if status == 302 or (
                    status == 200 and self.path == "/admin/" and "Site administration" not in response.text
                ):
                    status = "logged-out"
            except requests.RequestException as exc:
                status = type(exc).__name__
            self.records.append((started, time.monotonic(), status))
            time.sleep(pause)

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        return self.records


def summary(records, since=None):
    """{status: count}, and the first and last moment of the 503 answers."""
    counts = Counter(status for _, _, status in records)
    failed = [(s, e) for s, e, status in records if status == 503]
    window = (min(s for s, _ in failed), max(e for _, e in failed)) if failed else None
    return counts, window


def primary_client(group, service):
    return group.client(group.node_at(group.primary_address(service)))


@pytest.fixture(scope="module")
def sentinel_stack(cookies_session, tmp_path_factory):
    """Sessions and cache each a primary (127.0.0.2) + a replica (127.0.0.3), three sentinels; a stack using them."""
    require("redis-server")
    # min-replicas-to-write 0 (Redis' default, said explicitly): with one
    # replica, 1 would stop every login while that replica is down, and
    # after losing a node the promoted survivor has no replica at all.
    group = rr.SentinelGroup(tmp_path_factory.mktemp("sentinel"), {
        "sessions": ["--min-replicas-to-write", "0", "--appendonly", "yes", "--appendfsync", "everysec"],
        "cache": ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
    })  # fmt: skip
    env = {
        "REDIS_SESSIONS_URL": "redis:///0",
        "REDIS_SESSIONS_SENTINELS": group.env_value(),
        "REDIS_SESSIONS_SENTINEL_SERVICE": "sessions",
        "REDIS_CACHE_URL": "redis:///0",
        "REDIS_CACHE_SENTINELS": group.env_value(),
        "REDIS_CACHE_SENTINEL_SERVICE": "cache",
    }
    try:
        stack = start_remote_stack(cookies_session, "Rsent", **env)
    except BaseException:
        group.stop()
        raise
    stack.group, stack.env = group, env
    # One password hash for all: hashing 50 times costs half a minute.
    code = (
        "from django.contrib.auth.hashers import make_password\n"
        "from django.contrib.auth.models import User\n"
        f"hashed = make_password({PASSWORD!r})\n"
        "User.objects.bulk_create(User(username=f'user{i}', password=hashed, is_staff=True, is_superuser=True)\n"
        f"                        for i in range({USERS}))\n"
    )
    stack.manage("shell", "-c", code)
    yield stack
    try:
        stop_stack(stack)
    finally:
        group.stop()


def login_all(stack, usernames):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda name: log_login(stack, name), usernames))


def test_sentinel_failover_under_load_keeps_every_session(sentinel_stack):
    stack, group = sentinel_stack, sentinel_stack.group
    assert running_programs(stack) == sorted([f"{stack.slug}-gunicorn", f"{stack.slug}-nginx"])
    assert healthz(stack)[0] == 200
    started = time.monotonic()
    users = login_all(stack, [f"user{i}" for i in range(USERS)])
    report(f"{USERS} logins in {time.monotonic() - started:.1f} s")
    keys = {session.cookies["sessionid"] for session in users}
    rr.wait_in_sync(group, "sessions")
    old = group.primary_address("sessions")

    load = Load(stack, users)
    time.sleep(2)
    failover_at = time.monotonic()
    group.sentinel_client().execute_command("SENTINEL FAILOVER sessions")
    rr.wait_until(lambda: group.primary_address("sessions") != old, 30, "a new sessions primary")
    switched = time.monotonic() - failover_at
    time.sleep(4)
    records = load.stop()
    counts, window = summary(records)
    report(
        f"SENTINEL FAILOVER under load: {len(records)} requests, {dict(counts)}; new primary after {switched:.2f} s; "
        + (f"503s from +{window[0] - failover_at:.2f} s for {window[1] - window[0]:.2f} s" if window else "no 503")
    )
    assert counts[500] == 0 and counts["logged-out"] == 0, counts
    assert set(counts) <= {200, 503}, counts
    assert keys <= session_keys(primary_client(group, "sessions"), stack.slug)
    still = [
        session.get(f"{stack.base_url}/admin/", allow_redirects=False, timeout=10).status_code for session in users
    ]
    assert still == [200] * USERS


def test_cache_failover_is_only_cache_misses(sentinel_stack):
    stack, group = sentinel_stack, sentinel_stack.group
    rr.wait_in_sync(group, "cache")
    old = group.primary_address("cache")
    load = Load(stack, [requests.Session() for _ in range(6)], path="/")
    time.sleep(1)
    group.sentinel_client().execute_command("SENTINEL FAILOVER cache")
    rr.wait_until(lambda: group.primary_address("cache") != old, 30, "a new cache primary")
    time.sleep(3)
    counts, _ = summary(load.stop())
    report(f"cache SENTINEL FAILOVER under load on /: {dict(counts)}")
    assert set(counts) == {200}, counts
    # The page is cached again on the new primary.
    assert rr.wait_until(lambda: primary_client(group, "cache").dbsize() > 0, 10, "the page cached on the new primary")


def test_sigkill_of_the_sessions_primary(sentinel_stack):
    """Asynchronous replication: report what a crash of the primary costs."""
    stack, group = sentinel_stack, sentinel_stack.group
    primary = rr.wait_in_sync(group, "sessions")
    readers = login_all(stack, [f"user{i}" for i in range(20)])
    writer = SessionWriter(stack)
    load = Load(stack, readers, threads=4, pause=0.05)
    try:
        rr.wait_until(lambda: len(writer.writes) >= 100, 30, "100 sessions written")
        time.sleep(1)
        killed_at = time.monotonic()
        primary.kill()
        rr.wait_until(lambda: group.primary_address("sessions") != (primary.host, primary.port), 30, "a new primary")
        promoted = time.monotonic() - killed_at
        time.sleep(4)
    finally:
        records = load.stop()
        writes, errors = writer.stop()
    after = [(s, e, status) for s, e, status in records if s >= killed_at]
    counts, window = summary(after)
    served = sorted(e for s, e, status in after if status == 200)
    slowest = max(e - s for s, e, _ in records if e >= killed_at)
    back = next((e for e in served if not window or e > window[1]), None)
    last_second = [key for at, key in writes if killed_at - 1 <= at <= killed_at]
    kept = session_keys(primary_client(group, "sessions"), stack.slug)
    lost = [key for key in last_second if key not in kept]
    # Writes in flight at the kill may still land; "resumed" is the first one after the first failure.
    failed_at = min((at for at, _ in errors if at > killed_at), default=killed_at)
    resumed = min((at for at, _ in writes if at > failed_at), default=float("nan")) - killed_at
    report(
        f"SIGKILL of the sessions primary: new primary after {promoted:.2f} s; requests after the kill {dict(counts)}; "
        f"unavailable for {(back - killed_at) if back else float('nan'):.2f} s (first 200 of a request sent after the "
        f"kill; the slowest request then took {slowest:.2f} s); "
        f"sessions written in the last second before the kill: {len(last_second)}, lost: {len(lost)}; "
        f"the writer saved {len(writes)} sessions in all, again {resumed:.2f} s after the kill, "
        f"errors: {dict(Counter(name for _, name in errors))}"
    )
    assert counts[500] == 0, counts
    assert back is not None, "the site never came back"
    assert len(last_second) > 0
    # Sessions older than a second before the kill had long reached the replica.
    older = [key for at, key in writes if at < killed_at - 1]
    assert [key for key in older if key not in kept] == []


class SessionWriter:
    """A process that saves new sessions through the project's own session store
    (settings, .env, Sentinel), one every few milliseconds; (time, key) of each
    saved one, and (time, error class) of each failed one."""

    CODE = """
import time
from importlib import import_module
from django.conf import settings
store = import_module(settings.SESSION_ENGINE).SessionStore
while True:
    session = store()
    session["n"] = 1
    try:
        session.save()
        print(time.monotonic(), session.session_key, flush=True)
    except Exception as exc:
        print(time.monotonic(), "ERROR", type(exc).__name__, flush=True)
    time.sleep(0.005)
"""

    def __init__(self, stack):
        import subprocess

        self.writes, self.errors = [], []
        python = stack.project / ".venv" / "bin" / "python"
        self.process = subprocess.Popen(
            [python, "manage.py", "shell", "-c", self.CODE], cwd=stack.project, stdout=subprocess.PIPE, text=True
        )
        self.reader = threading.Thread(target=self.read)
        self.reader.start()

    def read(self):
        for line in self.process.stdout:
            fields = line.split()
            if len(fields) < 2 or not re.fullmatch(r"\d+\.\d+", fields[0]):
                continue  # what manage.py shell says first
            at, key, *error = fields
            if key == "ERROR":
                self.errors.append((float(at), error[0]))
            else:
                self.writes.append((float(at), key))

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        self.reader.join()
        return self.writes, self.errors


def test_unknown_sentinel_service_is_named_by_healthz(sentinel_stack):
    stack = sentinel_stack
    set_env(stack.project, **{**stack.env, "REDIS_SESSIONS_SENTINEL_SERVICE": "nosuch"})
    try:
        restart_gunicorn(stack)
        status, body = healthz(stack)
        assert status == 503 and body["failed"] == ["sessions"], body
        assert "nosuch" in body["checks"]["sessions"], body
        # A session cookie makes the page load that session.
        page = requests.get(f"{stack.base_url}/admin/", cookies={"sessionid": "x" * 32}, timeout=10)
        assert page.status_code == 503 and "Traceback" not in page.text
        report(f"unknown service: /healthz {status} {body['checks']['sessions']}")
    finally:
        set_env(stack.project, **stack.env)
        restart_gunicorn(stack)
    assert healthz(stack)[0] == 200


def test_sentinels_without_a_port_are_refused_in_one_line(sentinel_stack):
    stack = sentinel_stack
    set_env(stack.project, **{**stack.env, "REDIS_SESSIONS_SENTINELS": "127.0.0.2"})
    try:
        result = stack.make("up", check=False)
        assert result.returncode != 0
        first = result.stderr.strip().splitlines()[0]
        assert first.startswith("make up: REDIS_SESSIONS_SENTINELS: '127.0.0.2' has no port: write host:port"), first
    finally:
        set_env(stack.project, **stack.env)
    assert healthz(stack)[0] == 200
