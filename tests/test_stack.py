"""The local stack end to end: real redis-server x2, gunicorn, supervisord
and nginx from a baked project's `make up`, reached through nginx only."""

import gzip
import json
import re
import socket
import stat
from pathlib import Path

import brotli
import pytest
import requests
from conftest import (
    Stack,
    bake,
    free_port,
    project_processes,
    require_brotli_module,
    run,
    start_stack,
    stop_stack,
)

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
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "Expires" not in response.headers
    # Django would add X-Frame-Options; nginx serving the file does not, and
    # gunicorn never saw the request.
    assert "X-Frame-Options" not in response.headers
    assert stack.log("gunicorn.log").count("/static/") == before
    unhashed = requests.get(f"{stack.base_url}/static/admin/css/base.css", timeout=10)
    assert unhashed.headers["Cache-Control"] == "max-age=3600"


# What the project's storage compresses ({{cookiecutter.project_slug}}/storage.py COMPRESSIBLE).
TEXT_SUFFIXES = set(".css .js .mjs .map .json .svg .txt .html .htm .xml .ico .ttf .otf".split())
# Encoding: (suffix of the copy beside the file, how the test compresses and decodes it).
ENCODINGS = {
    "br": (".br", lambda data: brotli.compress(data, quality=10), brotli.decompress),
    "gzip": (".gz", lambda data: gzip.compress(data, 9), gzip.decompress),
}
SECURITY_HEADERS = ("X-Content-Type-Options", "Referrer-Policy", "Content-Security-Policy", "Permissions-Policy")


def raw_get(session, url, accept):
    """GET url with Accept-Encoding: accept; (headers, body exactly as sent, still encoded)."""
    response = session.get(url, headers={"Accept-Encoding": accept}, stream=True, timeout=10)
    assert response.status_code == 200, url
    return response.headers, response.raw.read(decode_content=False)


def expected_encoding(static, name, accept):
    """What nginx must send for `Accept-Encoding: accept`: the first copy that exists, br before gzip."""
    original = (static / name).read_bytes()
    for encoding, (suffix, compress, _) in ENCODINGS.items():
        if encoding not in accept:
            continue
        if (static / f"{name}{suffix}").exists():
            return encoding
        # collectstatic leaves a copy out only when it would not be smaller.
        assert len(compress(original)) >= len(original), (name, suffix)
    return None


def test_every_hashed_text_file_goes_out_compressed_as_asked(stack):
    """br or gzip as the client asks, the same bytes once decoded, immutable,
    Vary: Accept-Encoding, and the security headers still there."""
    require_brotli_module()
    static = stack.project / "static"
    hashed = sorted(set(json.loads((static / "staticfiles.json").read_text())["paths"].values()))
    texts = [name for name in hashed if Path(name).suffix.lower() in TEXT_SUFFIXES]
    # The admin's css, js and svg, nearly all with both copies.
    assert len(texts) > 100 and len(list(static.rglob("*.br"))) > 100
    session = requests.Session()
    for name in texts:
        original = (static / name).read_bytes()
        url = f"{stack.base_url}/static/{name}"
        for accept in ("br", "gzip", "gzip, deflate, br", "identity"):
            headers, body = raw_get(session, url, accept)
            expected = expected_encoding(static, name, accept)
            assert headers.get("Content-Encoding") == expected, (name, accept)
            assert (ENCODINGS[expected][2](body) if expected else body) == original, (name, accept)
            assert headers["Cache-Control"] == "public, max-age=31536000, immutable", name
            assert all(header in headers for header in SECURITY_HEADERS), (name, headers)
            if expected:
                assert headers["Vary"] == "Accept-Encoding", name


def test_images_are_sent_as_they_are(stack):
    """A png (compressed already) gets no .gz or .br and no Content-Encoding."""
    static = stack.project / "static"
    image = static / "photo.0123456789ab.png"
    image.write_bytes(bytes(range(256)) * 16)
    try:
        headers, body = raw_get(requests.Session(), f"{stack.base_url}/static/{image.name}", "gzip, deflate, br")
    finally:
        image.unlink()
    assert "Content-Encoding" not in headers and body == bytes(range(256)) * 16
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    # And collectstatic wrote no compressed copy of any image of its own.
    assert not [path for path in static.rglob("*.png.*") if path.suffix in (".gz", ".br")]


def test_pages_and_json_are_gzipped_on_the_fly(stack):
    session = requests.Session()
    for path in ("/admin/login/", "/healthz"):
        headers, body = raw_get(session, f"{stack.base_url}{path}", "gzip")
        assert headers.get("Content-Encoding") == "gzip", path
        assert "Accept-Encoding" in headers["Vary"], path
    headers, body = raw_get(session, f"{stack.base_url}/admin/login/", "gzip")
    assert b"csrfmiddlewaretoken" in gzip.decompress(body)
    assert all(header in headers for header in SECURITY_HEADERS), headers


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
