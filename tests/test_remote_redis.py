"""Redis off the box: a baked project's `make up` against Redis on other
addresses (127.0.0.2, 127.0.0.3) with TLS and ACL users, and through Redis
Sentinel. Real redis-server and redis-sentinel processes (tests/remote_redis.py).

Run with -s to see the failover figures (docs/data-off-the-box.md quotes them).
"""

import time

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
