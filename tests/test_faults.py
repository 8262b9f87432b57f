"""Faults lose nothing: sessions survive, a cache outage degrades, reloads drop
no request, workers come back. Each test runs against a baked project's real
`make up` stack (redis-server x2, gunicorn, supervisord, nginx on 127.0.0.1),
one shared stack per session_engine; every test leaves it running and healthy.

Run with -s to see the figures each test prints (the README's runbook quotes
them).
"""

import errno
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest
import requests
from conftest import TEMPLATE, TOOLS, bake, require, run, start_stack, stop_stack

pytestmark = pytest.mark.stack

PASSWORD = "faults-test-" + "pw-7q2m" * 3
# settings.REDIS_OPTIONS: SOCKET_CONNECT_TIMEOUT and SOCKET_TIMEOUT.
REDIS_SOCKET_TIMEOUT = 1.0


def report(message):
    print(f"\n[faults] {message}", flush=True)


# Helpers ---------------------------------------------------------------------


def program(stack, name):
    return f"{stack.slug}:{stack.slug}-{name}"


def ctl(stack, *args):
    return stack.make("ctl", "ARGS=" + " ".join(args))


def pid_of(stack, name):
    return stack.supervisor().getProcessInfo(program(stack, name))["pid"]


def children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def wait_for(condition, timeout, what):
    """Poll until condition() is truthy; return (value, seconds waited)."""
    started = time.monotonic()
    while True:
        value = condition()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def get(session, stack, path, **kwargs):
    started = time.monotonic()
    response = session.get(f"{stack.base_url}{path}", allow_redirects=False, timeout=10, **kwargs)
    response.elapsed_s = time.monotonic() - started
    return response


def login(stack):
    """Log in through nginx like a browser; return the requests session."""
    session, token = stack.login_form()
    response = stack.post_login(session, token, "admin", PASSWORD)
    assert response.status_code == 302, response.text[:500]
    assert logged_in(stack, session)
    return session


def logged_in(stack, session):
    """The admin index answers 200 to a logged-in user and redirects anyone else."""
    response = get(session, stack, "/admin/")
    return response.status_code == 200 and "Site administration" in response.text


def healthz(stack):
    response = get(requests, stack, "/healthz")
    return response.status_code, response.json()


def log_size(stack, name):
    path = stack.project / "logs" / name
    return path.stat().st_size if path.exists() else 0


def log_since(stack, name, offset):
    with open(stack.project / "logs" / name, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


# The shared stacks -------------------------------------------------------------


# One stack per session_engine with Django 5.2, and one with Django 6.1 (and
# the default engine) for the tests that carry DJANGO_61: the session stores
# and the 503 middleware lean on Django internals that 6.1 could change.
STACKS = {
    "cache": {"session_engine": "cache"},
    "cached_db": {"session_engine": "cached_db"},
    "django61": {"session_engine": "cache", "django_version": "6.1"},
}
DJANGO_61 = pytest.mark.parametrize("fault_stack", sorted(STACKS), indirect=True)


@pytest.fixture(scope="module", params=["cache", "cached_db"])
def fault_stack(request, cookies_session):
    """One running stack per choice in STACKS (short names: socket paths)."""
    choices = STACKS[request.param]
    stack = start_stack(cookies_session, project_name="F" + request.param.replace("_", ""), **choices)
    stack.engine = choices["session_engine"]
    request.addfinalizer(lambda: stop_stack(stack))
    stack.create_admin(PASSWORD)
    return stack


def all_running(stack):
    try:
        return all(info["statename"] == "RUNNING" for info in stack.supervisor().getAllProcessInfo())
    except (OSError, xmlrpc.client.Fault):
        return False


@pytest.fixture(autouse=True)
def restore(request):
    """After each test that used a shared stack: `make up` only when the test
    left a program (or supervisord) stopped, then /healthz 200 either way."""
    yield
    if "fault_stack" in request.fixturenames:
        stack = request.getfixturevalue("fault_stack")
        if not all_running(stack):
            stack.make("up")
        wait_for(lambda: get(requests, stack, "/healthz").status_code == 200, 30, "/healthz 200 after the test")


# 1. Logins survive cache faults and a sessions Redis restart ---------------------


@DJANGO_61
def test_cache_clear_logs_nobody_out(fault_stack):
    session = login(fault_stack)
    fault_stack.manage("shell", "-c", "from django.core.cache import cache; cache.clear()")
    assert fault_stack.redis("cache").dbsize() == 0
    assert logged_in(fault_stack, session)


def test_cache_redis_full_evicts_cache_not_logins(fault_stack):
    session = login(fault_stack)
    cache = fault_stack.redis("cache")
    maxmemory = int(cache.config_get("maxmemory")["maxmemory"])
    assert maxmemory > 0
    evicted_before = cache.info("stats")["evicted_keys"]
    value = os.urandom(64 * 1024)
    written = 0
    try:
        # Twice maxmemory, in the key shape Django uses.
        while written < 2 * maxmemory:
            pipe = cache.pipeline(transaction=False)
            for _ in range(64):
                pipe.set(f"{fault_stack.slug}:1:filler:{written}", value)
                written += len(value)
            pipe.execute()
        evicted = cache.info("stats")["evicted_keys"] - evicted_before
        used = cache.info("memory")["used_memory"]
        report(
            f"{fault_stack.engine}: wrote {written >> 20} MB into a {maxmemory >> 20} MB cache Redis: "
            f"{evicted} keys evicted, {used >> 20} MB used"
        )
        assert evicted > 0
        assert logged_in(fault_stack, session)
        assert get(requests, fault_stack, "/").status_code == 200
        assert fault_stack.redis("sessions").config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    finally:
        cache.flushdb()


def test_sessions_redis_restart_keeps_logins(fault_stack):
    session = login(fault_stack)
    key = session.cookies["sessionid"]
    sessions = fault_stack.redis("sessions")
    before = pid_of(fault_stack, "redis-sessions")
    ctl(fault_stack, "restart", program(fault_stack, "redis-sessions"))
    assert pid_of(fault_stack, "redis-sessions") != before
    # The append-only file brought the session back (cached_db: its cached copy).
    assert any(key in k.decode() for k in sessions.keys("*"))
    assert logged_in(fault_stack, session)
    after = pid_of(fault_stack, "redis-sessions")
    report(f"{fault_stack.engine}: sessions Redis restarted (pid {before} -> {after}): still logged in")


@pytest.mark.parametrize("fault_stack", ["django61"], indirect=True)
def test_django_61_runs_for_real(fault_stack):
    """The 6.1 stack runs 6.1, and the project's own tests (the session stores and
    the 503 middleware, against a real redis-server) pass with it."""
    python = fault_stack.project / ".venv" / "bin" / "python"
    version = run([python, "-c", "import django; print(django.__version__)"], fault_stack.project).stdout.strip()
    assert version.startswith("6.1."), version
    fault_stack.make("test")


# 2. The cache Redis stopped: cache misses, /healthz 503, back without restarts ------


def test_cache_redis_stopped_degrades_to_misses(fault_stack):
    session = login(fault_stack)
    pids = {name: pid_of(fault_stack, name) for name in ("gunicorn", "redis-sessions", "nginx")}
    offset = log_size(fault_stack, "gunicorn.log")
    ctl(fault_stack, "stop", program(fault_stack, "redis-cache"))
    assert not (fault_stack.project / "run" / "redis-cache.sock").exists()

    # A new URL each time: neither nginx's page cache nor an earlier
    # cache_page entry may answer in Django's place.
    pages = [get(requests, fault_stack, f"/?outage={i}") for i in range(5)]
    assert [page.status_code for page in pages] == [200] * 5
    assert all(page.headers.get("X-Cache-Status") != "HIT" for page in pages)
    assert all("every hop a unix socket" in page.text for page in pages)
    assert logged_in(fault_stack, session)
    # django-redis logs each failed cache call once (a cache_page miss is a
    # GET, then two SETs): no silent outage, and no retries multiplying it.
    log = log_since(fault_stack, "gunicorn.log", offset)
    ignored = log.count("Exception ignored")
    assert 5 <= ignored <= 3 * 5 + 4, ignored
    assert not re.search(r'" 5\d\d ', log)  # no 500 (nor any 5xx) for a cache outage
    status, body = healthz(fault_stack)
    assert status == 503
    assert body["failed"] == ["cache"]
    report(
        f"{fault_stack.engine}: cache Redis down: 5/5 pages 200, max {max(p.elapsed_s for p in pages) * 1000:.0f} ms, "
        f"{ignored} 'Exception ignored' log entries, still logged in, /healthz 503 {body['failed']}"
    )

    ctl(fault_stack, "start", program(fault_stack, "redis-cache"))
    status, _ = wait_for(lambda: healthz(fault_stack)[0] == 200, 10, "/healthz 200 after the cache Redis started")
    assert {name: pid_of(fault_stack, name) for name in pids} == pids  # nothing else restarted
    assert logged_in(fault_stack, session)


# 3. The sessions Redis stopped -------------------------------------------------------


@DJANGO_61
def test_sessions_redis_stopped(fault_stack):
    session = login(fault_stack)
    offset = log_size(fault_stack, "gunicorn.log")
    ctl(fault_stack, "stop", program(fault_stack, "redis-sessions"))
    try:
        # Pages that do not touch the session still answer, cookie or not.
        assert get(requests, fault_stack, "/").status_code == 200
        assert get(session, fault_stack, "/").status_code == 200
        status, body = healthz(fault_stack)
        assert status == 503
        assert body["failed"] == ["sessions"]

        admin = get(session, fault_stack, "/admin/")
        form_session, token = fault_stack.login_form()  # CSRF uses a cookie, not the session
        started = time.monotonic()
        new_login = fault_stack.post_login(form_session, token, "admin", PASSWORD)
        login_seconds = time.monotonic() - started
        if fault_stack.engine == "cache":
            # Fails fast with the 503 page; the cookie is kept, not deleted.
            # The login spends its time on the password hash (PBKDF2) before it
            # touches Redis: bound it generously; a retry loop would take far longer.
            for response, seconds, bound in (
                (admin, admin.elapsed_s, REDIS_SOCKET_TIMEOUT / 2),
                (new_login, login_seconds, 2 * REDIS_SOCKET_TIMEOUT),
            ):
                assert response.status_code == 503
                assert response.headers["Retry-After"].isdigit()
                assert "You are still logged in" in response.text  # Django's page, not nginx's
                assert seconds < bound
                assert "sessionid" not in response.headers.get("Set-Cookie", "")
            log = log_since(fault_stack, "gunicorn.log", offset)
            # One log line per failed request: no retry storm.
            assert log.count("Redis unavailable") == 2, log[-3000:]
            assert "Traceback" not in log
            outcome = f"/admin/ 503 in {admin.elapsed_s * 1000:.0f} ms, login 503 in {login_seconds * 1000:.0f} ms"
        else:
            # cached_db: the database serves, logins keep working.
            assert admin.status_code == 200
            assert new_login.status_code == 302
            assert logged_in(fault_stack, form_session)
            outcome = f"/admin/ 200, new login 302 in {login_seconds * 1000:.0f} ms (from the database)"
        report(f"{fault_stack.engine}: sessions Redis down: /, /healthz 503 {body['failed']}, {outcome}")
    finally:
        ctl(fault_stack, "start", program(fault_stack, "redis-sessions"))
    wait_for(lambda: healthz(fault_stack)[0] == 200, 10, "/healthz 200 after the sessions Redis started")
    assert logged_in(fault_stack, session)  # AOF (cache) or the database (cached_db)
    if fault_stack.engine == "cached_db":
        assert logged_in(fault_stack, form_session)


# 4. Graceful reloads under load -------------------------------------------------------


def parse_wrk(output):
    requests_sent = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    max_latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output).group(1)
    return {
        "requests": requests_sent,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "max_latency": max_latency,
    }


def test_reload_twice_under_load_drops_nothing(fault_stack):
    wrk = require("wrk")
    hups_before = fault_stack.log("gunicorn.log").count("Handling signal: hup")
    access_offset = log_size(fault_stack, "nginx-access.log")
    gunicorn_offset = log_size(fault_stack, "gunicorn.log")
    # Bounded: 12 s of 8 connections on loopback, reloads at 3 s and 7 s.
    # /healthz: never cached, by nginx or Django, so every request needs a
    # gunicorn worker (nginx's page cache would answer "/" during the reload).
    load = subprocess.Popen(
        [wrk, "-t2", "-c8", "-d12s", "--timeout", "10s", "--latency", f"{fault_stack.base_url}/healthz"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(3)
        fault_stack.make("reload")
        time.sleep(4)
        fault_stack.make("reload")
        output, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
    result = parse_wrk(output)
    statuses = re.findall(r'" (\d{3}) ', log_since(fault_stack, "nginx-access.log", access_offset))
    report(f"{fault_stack.engine}: wrk during two HUP reloads: {result}; nginx logged {len(statuses)} requests")
    assert fault_stack.log("gunicorn.log").count("Handling signal: hup") == hups_before + 2
    assert result["requests"] > 0
    assert result["non_2xx"] == 0, output
    assert result["socket_errors"] == 0, output
    assert statuses and set(statuses) <= {"200", "499"}
    # 499 is nginx's "client closed the connection": wrk drops the requests
    # still in flight when its time is up, at most one per connection.
    assert statuses.count("499") <= 8, statuses.count("499")
    # Every answered request went through a gunicorn worker (none from a cache).
    assert log_since(fault_stack, "gunicorn.log", gunicorn_offset).count("GET /healthz") >= result["requests"] - 8


# 5. Worker and master crashes --------------------------------------------------------


def test_killed_worker_is_replaced(fault_stack):
    master = pid_of(fault_stack, "gunicorn")
    workers = children(master)
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    replaced, seconds = wait_for(
        lambda: (lambda now: now if len(now) == len(workers) and workers[0] not in now else None)(children(master)),
        15,
        "a new worker after SIGKILL",
    )
    responses = [get(requests, fault_stack, path).status_code for path in ("/", "/healthz") * 10]
    report(
        f"{fault_stack.engine}: worker {workers[0]} SIGKILLed, replaced in {seconds:.1f} s; "
        f"next 20 requests {set(responses)}"
    )
    assert responses == [200] * 20
    assert pid_of(fault_stack, "gunicorn") == master


def test_killed_master_is_restarted_and_make_down_still_works(fault_stack):
    master = pid_of(fault_stack, "gunicorn")
    workers = children(master)
    os.kill(master, signal.SIGKILL)
    new_master, seconds = wait_for(
        lambda: (lambda pid: pid if pid and pid != master else None)(pid_of(fault_stack, "gunicorn")),
        15,
        "supervisor restarting gunicorn",
    )
    wait_for(lambda: healthz(fault_stack)[0] == 200, 15, "/healthz 200 with the new master")
    # The old master's workers notice their parent is gone and exit.
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 30, "the orphaned workers exit")
    report(
        f"{fault_stack.engine}: gunicorn master SIGKILLed, supervisor restarted it"
        f" (pid {new_master}) in {seconds:.1f} s"
    )
    assert [get(requests, fault_stack, "/").status_code for _ in range(10)] == [200] * 10
    stop_stack(fault_stack)  # make down: no process, no socket left
    fault_stack.make("up")


# 6. make up after a crash --------------------------------------------------------------


def test_make_up_after_a_crash(fault_stack):
    session = login(fault_stack)
    # Written to the append-only file, the session survives a SIGKILL of Redis
    # (the kernel has the bytes; appendfsync everysec only guards power loss).
    key = session.cookies["sessionid"].encode()
    aof = fault_stack.project / "var" / "redis-sessions"
    wait_for(lambda: any(key in path.read_bytes() for path in aof.rglob("*.aof")), 10, "the session in the AOF")
    for pid in fault_stack.processes():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not fault_stack.processes(), 10, "every process of the stack gone")
    stale = sorted(path.name for path in (fault_stack.project / "run").iterdir() if path.suffix in (".sock", ".pid"))
    assert {"gunicorn.sock", "supervisor.sock", "supervisord.pid"} <= set(stale), stale
    result = fault_stack.make("up")
    assert "Stack started" in result.stdout
    last_line = result.stdout.strip().splitlines()[-1]
    report(f"{fault_stack.engine}: SIGKILL of the whole stack left {stale}; make up: {last_line}")
    assert logged_in(fault_stack, session)


# 8. run/ read-only or full at make up ------------------------------------------------------


@pytest.fixture(scope="module")
def idle(cookies_session):
    """A baked project with a .venv whose stack is never started."""
    require("redis-server")
    require("nginx")
    return bake(cookies_session, venv=True, project_name="Idle")


def mount(*args):
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {result.stderr.strip()}")


def make_up_fails_naming(project, path, reason):
    result = run(["make", "--no-print-directory", "up"], project, check=False, timeout=120)
    output = result.stdout + result.stderr
    message = [line for line in output.splitlines() if "cannot write there" in line]
    report(f"make up with {reason}: exit {result.returncode}: {message}")
    assert result.returncode != 0
    assert f"{path}: cannot write there" in output
    assert "Traceback" not in output
    assert not (project / "run" / "supervisor.sock").exists()


def fill(directory):
    """Write until the file system says it is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_make_up_with_unwritable_run_dir(idle, fault):
    """A read-only bind mount or a full tmpfs on run/: real kernel errors, even for root."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    run_dir = idle / "run"
    run_dir.mkdir(exist_ok=True)
    if fault == "read-only":
        mount("--bind", str(run_dir), str(run_dir))
    else:
        mount("-t", "tmpfs", "-o", "size=16k", "tmpfs", str(run_dir))
    try:
        if fault == "read-only":
            subprocess.run(["mount", "-o", "remount,bind,ro", str(run_dir)], check=True)
        else:
            fill(run_dir)
        make_up_fails_naming(idle, run_dir, fault)
    finally:
        subprocess.run(["umount", str(run_dir)], check=True)


def test_make_up_with_a_file_where_run_dir_belongs(idle):
    run_dir = idle / "run"
    shutil.rmtree(run_dir)
    run_dir.write_text("not a directory\n")
    try:
        make_up_fails_naming(idle, run_dir, "a file in place of run/")
    finally:
        run_dir.unlink()


# 7. The post-gen hook's Redis check, for real --------------------------------------------


def bake_cli(tmp_path, env, **context):
    """Bake with the cookiecutter CLI (the hook's output is what a user sees)."""
    config = tmp_path / "cookiecutter.yaml"
    config.write_text(f"cookiecutters_dir: {tmp_path}/cc\nreplay_dir: {tmp_path}/replay\n")
    answers = [f"{key}={value}" for key, value in {"project_name": "Hk", **context}.items()]
    command = [TOOLS / "cookiecutter", "--no-input", "--config-file", config, "-o", tmp_path / "out", TEMPLATE]
    result = run([*command, *answers], tmp_path, env={"SOCKETSTACK_SKIP_VENV": "1", **env}, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (tmp_path / "out" / "hk" / "manage.py").exists()
    return [line for line in output.splitlines() if line.startswith("[socketstack] Redis:")]


def test_hook_redis_server_missing_from_path(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    lines = bake_cli(tmp_path, {"PATH": f"{empty}:{TOOLS}"}, redis="dedicated")
    report(f"hook, no redis-server: {lines}")
    assert lines == ["[socketstack] Redis: redis-server is not installed. Run: sudo apt-get install redis-server"]


def test_hook_system_socket_missing(tmp_path):
    require("redis-server")
    missing = tmp_path / "nothing-here.sock"
    lines = bake_cli(tmp_path, {"SOCKETSTACK_SYSTEM_REDIS_SOCKET": str(missing)}, redis="system")
    report(f"hook, no socket: {lines[-1]}")
    assert lines[-1].startswith(f"[socketstack] Redis: no socket at {missing}. Run: sudo apt-get install redis-server")
    assert "unixsocketperm 770" in lines[-1]


def test_hook_socket_not_redis(tmp_path):
    require("redis-server")
    path = tmp_path / "other.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)

    def answer():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        lines = bake_cli(tmp_path, {"SOCKETSTACK_SYSTEM_REDIS_SOCKET": str(path)}, redis="system")
    finally:
        server.close()
    report(f"hook, not Redis: {lines[-1]}")
    assert (
        lines[-1]
        == f"[socketstack] Redis: {path} answers, but not as Redis. Check `unixsocket` in /etc/redis/redis.conf"
    )


CHECK_AS_USER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import post_gen_project as hook
ok, lines = hook.check_redis(Path("."), {"redis": "system"}, sys.argv[2])
for line in lines:
    hook.say(f"Redis: {line}")
print("ok" if ok else "not ok")
"""


def test_hook_socket_permission_denied():
    """A real redis-server owned by root, socket 770; the check runs as nobody."""
    redis_server = require("redis-server")
    require("setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        python = require("python3")
    # World-readable copies: pytest's tmp dirs are 0700, nobody could not read the hook.
    workdir = Path(tempfile.mkdtemp(prefix="sst-perm-"))
    try:
        workdir.chmod(0o755)
        shutil.copy(TEMPLATE / "hooks" / "post_gen_project.py", workdir / "post_gen_project.py")
        (workdir / "post_gen_project.py").chmod(0o644)
        sock = workdir / "redis.sock"
        server = subprocess.Popen(
            [redis_server, "--port", "0", "--save", "", "--unixsocket", str(sock), "--unixsocketperm", "770"],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: sock.exists(), 10, "redis-server's socket")
            assert stat.S_IMODE(sock.stat().st_mode) == 0o770
            # root connects fine: the socket is a real Redis.
            import redis

            assert redis.Redis(unix_socket_path=str(sock)).ping()
            result = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-I", "-c", CHECK_AS_USER]
                + [str(workdir), str(sock)],
                cwd="/",
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = result.stdout.splitlines()
    report(f"hook as nobody: {lines}")
    assert result.returncode == 0, result.stderr
    assert lines[-1] == "not ok"
    assert lines[-2] == (
        f"[socketstack] Redis: permission denied on {sock}. Run: sudo usermod -a -G redis $USER, "
        "then log in again (group membership is read at login)"
    )
