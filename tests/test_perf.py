"""The template's benchmark (tools/bench.py) and nginx's page cache, on a real local stack.

The bench runs once in a very short mode: it proves the tool works on a baked
project and reports every row; nothing here asserts a speed.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import Stack, bake, free_port, require, stop_stack
from test_stack import ADMIN_PASSWORD, login

pytestmark = pytest.mark.stack

BENCH = Path(__file__).resolve().parent.parent / "tools" / "bench.py"
BENCH_ROWS = {"static", "healthz", "home", "home-django", "plain", "session-write", "session-read"}


def test_baked_project_has_no_benchmark_and_no_bench_route(stack):
    assert not (stack.project / "deploy" / "bench.py").exists()
    assert "bench" not in (stack.project / "Makefile").read_text()
    for path in ("/bench/plain", "/bench/session-write", "/bench/session-read"):
        assert requests.get(f"{stack.base_url}{path}", timeout=10).status_code == 404


def test_tools_bench_reports_every_row_and_stops_what_it_started(stack, tmp_path):
    require("wrk")
    before = set(stack.processes())
    report_file = tmp_path / "bench.json"
    command = [sys.executable, BENCH, "--project", stack.project, "--seconds", "1", "--rounds", "1"]
    command += ["--compare", "redis", "--json", report_file]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert set(report["variants"]) == {"default", "redis-socket", "redis-tcp"}
    assert set(report["variants"]["default"]["rows"]) == BENCH_ROWS
    for name, variant in report["variants"].items():
        for row, data in variant["rows"].items():
            assert data["rps"] > 0 and data["p99_ms"] > 0 and data["ratio_to_static"] > 0, (name, row, data)
            assert data["errors"] == 0, (name, row, data)
            assert row in result.stdout
    assert report["summary"]["session-write / plain"] > 0
    assert report["summary"]["socket / tcp (session-write)"] > 0
    assert "| session-write |" in report_file.with_suffix(".md").read_text()
    # The bench stopped exactly what it started (its nginx, gunicorn, Redis)
    # and left nothing in the project's code: its views live in var/bench/.
    assert set(stack.processes()) == before
    assert not list((stack.project / "run").glob("bench-*"))
    assert (stack.project / "var" / "bench" / "bench_views.py").exists()
    assert requests.get(f"{stack.base_url}/bench/plain", timeout=10).status_code == 404
    assert requests.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200


def test_make_loadtest_reports_rate_and_p99_of_each_path(stack):
    require("wrk")
    result = stack.make("loadtest", "URLS=/ /healthz", "DURATION=1", timeout=120)
    lines = [line.split() for line in result.stdout.splitlines() if "req/s" in line]
    assert [line[0] for line in lines] == ["/", "/healthz"], result.stdout
    for line in lines:
        assert float(line[1]) > 0 and line[3] == "p99" and line[4][0].isdigit(), line
    assert "Non-2xx" not in result.stdout and "Socket errors" not in result.stdout


# nginx's page cache (nginx_page_cache, on by default) -----------------------------

# Views that only these tests add to a baked project: each says who asked and
# when it was rendered, so a cached copy is recognisable.
CACHE_TEST_VIEWS = """
import time

from django.http import HttpResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.csrf import csrf_exempt


def _body(request):
    user = request.user.username if request.user.is_authenticated else "anonymous"
    return f"user={user} at={time.time_ns()}"


@csrf_exempt
@cache_control(public=True, max_age=60)
def public(request):
    # Reads request.user, so Django adds Vary: Cookie.
    return HttpResponse(_body(request))


@cache_control(public=True, max_age=60)
def sets_cookie(request):
    response = HttpResponse(_body(request))
    response.set_cookie("flavour", "plain")
    return response


@cache_control(private=True, max_age=60)
def private(request):
    return HttpResponse(_body(request))


def no_cache_control(request):
    return HttpResponse(f"at={time.time_ns()}")
"""
CACHE_TEST_URLS = """
from web import cachetest  # noqa: E402

urlpatterns += [
    path("t/public", cachetest.public),
    path("t/cookie", cachetest.sets_cookie),
    path("t/private", cachetest.private),
    path("t/plain", cachetest.no_cache_control),
]
"""


@pytest.fixture(scope="module")
def page_cache_stack(cookies_session):
    """A running stack with the page cache on, plus the views above and two users."""
    require("redis-server")
    require("nginx")
    project = bake(cookies_session, venv=True, project_name="pc", local_port=str(free_port()))
    (project / "web" / "cachetest.py").write_text(CACHE_TEST_VIEWS)
    urls = project / "pc" / "urls.py"
    urls.write_text(urls.read_text() + CACHE_TEST_URLS)
    running = Stack(project)
    try:
        running.make("up")
        for user in ("alice", "bob"):
            running.create_admin(ADMIN_PASSWORD, username=user)
        yield running
    finally:
        stop_stack(running)


def get(stack, path, session=None, **kwargs):
    response = (session or requests).get(f"{stack.base_url}{path}", timeout=10, allow_redirects=False, **kwargs)
    return response, response.headers.get("X-Cache-Status")


def django_saw(stack, method, path):
    """How many times gunicorn logged this request line (the log is written through a pipe)."""
    time.sleep(0.3)
    return stack.log("gunicorn.log").count(f'"{method} {path} HTTP/1.0"')


def test_anonymous_page_served_by_nginx(page_cache_stack):
    first, status = get(page_cache_stack, "/?t=1")
    assert first.status_code == 200 and status == "MISS"
    assert django_saw(page_cache_stack, "GET", "/?t=1") == 1
    second, status = get(page_cache_stack, "/?t=1")
    assert status == "HIT"
    assert second.text == first.text
    assert django_saw(page_cache_stack, "GET", "/?t=1") == 1  # gunicorn never saw the second request
    assert "HIT" not in get(page_cache_stack, "/?t=1", headers={"Cookie": "sessionid=whatever"})[1]


def test_logged_in_users_never_share_pages(page_cache_stack):
    anonymous, _ = get(page_cache_stack, "/t/public?u=1")
    assert get(page_cache_stack, "/t/public?u=1")[1] == "HIT"
    assert "user=anonymous" in anonymous.text
    alice, bob = login(page_cache_stack, "alice", ADMIN_PASSWORD), login(page_cache_stack, "bob", ADMIN_PASSWORD)
    seen = set()
    for _ in range(2):
        for name, session in (("alice", alice), ("bob", bob)):
            response, status = get(page_cache_stack, "/t/public?u=1", session)
            assert f"user={name} " in response.text
            assert status == "BYPASS"
            assert response.text not in seen
            seen.add(response.text)
    # What the logged-in users got was never stored: anonymous visitors still get the anonymous page.
    again, status = get(page_cache_stack, "/t/public?u=1")
    assert "user=anonymous" in again.text and status in {"HIT", "EXPIRED", "MISS"}


def test_admin_post_cookies_and_private_are_never_cached(page_cache_stack):
    for path in ("/admin/login/", "/t/cookie", "/t/private", "/t/plain"):
        for _ in range(3):
            assert get(page_cache_stack, path)[1] != "HIT", path
        assert django_saw(page_cache_stack, "GET", path) == 3, path
    for _ in range(3):
        response = requests.post(f"{page_cache_stack.base_url}/t/public?p=1", timeout=10)
        assert response.status_code == 200
        assert response.headers.get("X-Cache-Status") != "HIT"
    assert django_saw(page_cache_stack, "POST", "/t/public?p=1") == 3
    # A GET of the same URL after the POSTs is a miss: no POST response was stored.
    assert get(page_cache_stack, "/t/public?p=1")[1] == "MISS"


def test_pages_expire_after_five_seconds(page_cache_stack):
    get(page_cache_stack, "/?t=expire")
    assert get(page_cache_stack, "/?t=expire")[1] == "HIT"
    time.sleep(6.5)  # nginx counts validity in whole seconds: 5 s means 5 to 6 s
    assert get(page_cache_stack, "/?t=expire")[1] == "EXPIRED"  # Django's max-age is 900 s: nginx caps it
    assert django_saw(page_cache_stack, "GET", "/?t=expire") == 2


def test_security_headers_exactly_once(page_cache_stack):
    manifest = json.loads((page_cache_stack.project / "static" / "staticfiles.json").read_text())
    paths = ["/", "/", "/healthz", "/no-such-page", "/admin/login/", f"/static/{manifest['paths']['web/site.css']}"]
    for path in paths:
        response = requests.get(f"{page_cache_stack.base_url}{path}", timeout=10)
        headers = response.raw.headers
        for name in ("X-Content-Type-Options", "Referrer-Policy"):
            assert len(headers.getlist(name)) == 1, (path, name, headers)
        assert len(headers.getlist("X-Cache-Status")) == (0 if path.startswith("/static/") else 1), path
        assert len(headers.getlist("X-Frame-Options")) <= 1, path


def test_make_down_up_purges_the_page_cache(page_cache_stack):
    get(page_cache_stack, "/?t=purge")
    assert get(page_cache_stack, "/?t=purge")[1] == "HIT"
    assert list((page_cache_stack.project / "var" / "nginx-cache").rglob("*"))
    page_cache_stack.make("down")
    assert not (page_cache_stack.project / "var" / "nginx-cache").exists()
    page_cache_stack.make("up")
    assert get(page_cache_stack, "/?t=purge")[1] == "MISS"
