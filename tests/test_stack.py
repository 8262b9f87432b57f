"""The local stack end to end: real redis-server x2, gunicorn, supervisord
and nginx from a baked project's `make up`, reached through nginx only."""

import json
import re
import socket
import stat

import pytest
import requests
from conftest import Stack, bake, free_port, project_processes, run, start_stack, stop_stack

pytestmark = pytest.mark.stack

ADMIN_PASSWORD = "stack-test-" + "pw-9f3k" * 3


@pytest.fixture(scope="module")
def admin(stack):
    return stack.create_admin(ADMIN_PASSWORD)


def login(stack, username, password):
    """Log in to /admin/ the way a browser does: GET the form, POST it with its CSRF token."""
    session, token = stack.login_form()
    response = stack.post_login(session, token, username, password)
    assert response.status_code == 302, response.text[:500]
    assert response.headers["Location"] == "/admin/"
    return session


def redis_keys(client):
    return [key.decode() for key in client.keys("*")]


def test_healthz_through_nginx(stack):
    response = requests.get(f"{stack.base_url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "cache": "ok", "sessions": "ok"}
    assert response.headers["Server"] == "nginx"  # no version: server_tokens off


def test_home_page_is_cached_in_cache_redis(stack):
    stack.redis("cache").flushdb()
    response = requests.get(f"{stack.base_url}/", timeout=10)
    assert response.status_code == 200, stack.log("gunicorn.log")[-4000:]
    assert "every hop a unix socket" in response.text
    keys = redis_keys(stack.redis("cache"))
    assert any("views.decorators.cache.cache_page" in key for key in keys), keys
    assert not any("cache_page" in key for key in redis_keys(stack.redis("sessions")))


def test_admin_login_session_lives_in_sessions_redis(stack, admin):
    session = login(stack, *admin)
    session_key = session.cookies["sessionid"]
    assert session.get(f"{stack.base_url}/admin/", allow_redirects=False, timeout=10).status_code == 200
    assert any(session_key in key for key in redis_keys(stack.redis("sessions")))
    assert not any(session_key in key for key in redis_keys(stack.redis("cache")))


def test_cache_clear_logs_nobody_out(stack, admin):
    session = login(stack, *admin)
    stack.manage("shell", "-c", "from django.core.cache import cache; cache.clear()")
    assert session.get(f"{stack.base_url}/admin/", allow_redirects=False, timeout=10).status_code == 200


def test_static_file_served_by_nginx_with_long_cache(stack):
    manifest = json.loads((stack.project / "static" / "staticfiles.json").read_text())
    hashed = manifest["paths"]["admin/css/base.css"]
    before = stack.log("gunicorn.log").count("/static/")
    response = requests.get(f"{stack.base_url}/static/{hashed}", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/css"
    assert "max-age=31536000" in response.headers["Cache-Control"]
    # Django would add X-Frame-Options; nginx serving the file does not, and
    # gunicorn never saw the request.
    assert "X-Frame-Options" not in response.headers
    assert stack.log("gunicorn.log").count("/static/") == before
    unhashed = requests.get(f"{stack.base_url}/static/admin/css/base.css", timeout=10)
    assert unhashed.headers["Cache-Control"] == "max-age=3600"


def test_dotfiles_are_not_served(stack):
    assert requests.get(f"{stack.base_url}/.env", timeout=10).status_code == 404
    assert requests.get(f"{stack.base_url}/static/.hidden", timeout=10).status_code == 404


def test_sockets_closed_to_others(stack):
    sockets = list((stack.project / "run").glob("*.sock"))
    names = {path.name for path in sockets}
    assert {"gunicorn.sock", "redis-cache.sock", "redis-sessions.sock", "supervisor.sock"} <= names
    for path in sockets:
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert mode & 0o007 == 0, f"{path.name} is open to others: {oct(mode & 0o777)}"
    assert (stack.project / "run" / "supervisor.sock").stat().st_mode & 0o077 == 0


def test_redis_instances_have_no_tcp_port_and_their_policies(stack):
    cache, sessions = stack.redis("cache"), stack.redis("sessions")
    assert cache.config_get("port")["port"] == "0"
    assert sessions.config_get("port")["port"] == "0"
    assert cache.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    assert int(cache.config_get("maxmemory")["maxmemory"]) > 0
    assert cache.config_get("appendonly")["appendonly"] == "no"
    assert sessions.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert sessions.config_get("appendonly")["appendonly"] == "yes"


def test_second_make_up_is_harmless(stack):
    pids = set(stack.processes())
    result = stack.make("up")
    assert "Stack updated" in result.stdout
    assert requests.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200
    assert set(stack.processes()) == pids  # nothing restarted, nothing added


def test_status_lists_every_program_running(stack):
    out = stack.make("status").stdout
    for program in ("redis-cache", "redis-sessions", "gunicorn", "nginx"):
        assert re.search(rf"{stack.slug}-{program}\s+RUNNING", out), out


def test_project_make_test_and_check(stack):
    """The baked project's own suite and checks, with its own .venv."""
    result = stack.make("test", timeout=300)
    assert re.search(r"\d+ passed", result.stdout)
    stack.make("check", timeout=300)


# Short project names: socket paths are limited to 107 bytes.
def test_two_projects_run_side_by_side_and_stop_apart(cookies, stack):
    """Two baked projects on different ports run at once, and stop apart."""
    other = start_stack(cookies, project_name="Two", session_engine="cached_db")
    try:
        assert other.port != stack.port
        for running in (stack, other):
            assert requests.get(f"{running.base_url}/healthz", timeout=10).status_code == 200
        assert set(other.processes()).isdisjoint(stack.processes())
    finally:
        stop_stack(other)
    # The first stack did not notice.
    assert requests.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200


def test_make_up_of_a_broken_project_fails_with_the_log_tail(cookies):
    """A project that cannot start makes `make up` fail and show the log tail."""
    broken = Stack(bake(cookies, venv=True, project_name="Bad", local_port=str(free_port())))
    try:
        # Only gunicorn imports wsgi.py: migrate and collectstatic still pass.
        wsgi = broken.project / broken.slug / "wsgi.py"
        wsgi.write_text(wsgi.read_text() + "\nraise RuntimeError('boom from wsgi')\n")
        result = broken.make("up", check=False, env={"UP_TIMEOUT": "8"})
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "/healthz did not answer 200" in output
        assert "boom from wsgi" in output  # the tail of gunicorn's log
    finally:
        stop_stack(broken)


def test_up_refuses_a_taken_port(cookies):
    """Something else on LOCAL_PORT must not pass for the stack's /healthz."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    try:
        project = bake(cookies, venv=True, project_name="Taken", local_port=str(port))
        result = run(["make", "up"], project, check=False, timeout=180)
        assert result.returncode != 0
        assert f"127.0.0.1:{port} is already taken" in result.stderr
        assert project_processes(project) == []
    finally:
        squatter.close()
