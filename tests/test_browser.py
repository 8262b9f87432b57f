"""The local stack (`make up`) seen by a real browser: Debian's headless Chromium.

Screenshots of every page land in the test's tmp dir, under screenshots/.
The https server is driven by the same browser in test_acme.py, once it has a
certificate that the browser trusts.
"""

import time

import pytest
import requests
from browser import Watch, chromium, chromium_path, log_in, logged_in, shot
from conftest import start_stack, stop_stack

PASSWORD = "browser-test-" + "pw-3k9q" * 3


@pytest.fixture(scope="module")
def local(cookies_session):
    chromium_path()  # skip (or fail in CI) before baking anything
    stack = start_stack(cookies_session)
    try:
        stack.create_admin(PASSWORD)
        yield stack
    finally:
        stop_stack(stack)


@pytest.fixture
def page(local, tmp_path):
    with chromium(tmp_path / "home") as browser:
        context = browser.new_context()
        yield context.new_page()
        context.close()


def test_home_page_renders_with_its_css(local, page, tmp_path):
    watch = Watch(page)
    css = []
    page.on("response", lambda r: css.append((r.url, r.status)) if r.url.endswith(".css") else None)
    response = page.goto(local.base_url + "/")
    assert response.status == 200
    assert page.title() == page.inner_text("h1")
    # site.css applied: its background and the centred column.
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
    assert page.evaluate("getComputedStyle(document.querySelector('main')).maxWidth") == "640px"
    assert css and all(status == 200 for _, status in css), css
    shot(page, tmp_path, "local-home")
    assert watch.problems == []


def test_admin_login_and_logout_through_the_form(local, page, tmp_path):
    watch = Watch(page)
    page.goto(local.base_url + "/admin/login/")
    shot(page, tmp_path, "local-login")
    token = log_in(page, local.base_url, "admin", PASSWORD)
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert "sessionid" in cookies and cookies["sessionid"]["httpOnly"]
    assert cookies["csrftoken"]["value"] and cookies["csrftoken"]["value"] != token  # the form's token is masked
    assert logged_in(page)
    shot(page, tmp_path, "local-admin")
    with page.expect_navigation():
        page.click("#logout-form button[type=submit]")
    assert page.locator("h1").inner_text() == "Logged out"
    assert "sessionid" not in {c["name"] for c in page.context.cookies()}
    shot(page, tmp_path, "local-logged-out")
    page.goto(local.base_url + "/admin/")
    assert "/admin/login/" in page.url  # the session is really gone
    assert watch.problems == []


def test_sessions_redis_down_shows_503_then_same_browser_is_still_logged_in(local, page, tmp_path):
    log_in(page, local.base_url, "admin", PASSWORD)
    program = f"{local.slug}:{local.slug}-redis-sessions"
    local.make("ctl", f"ARGS=stop {program}")
    try:
        response = page.goto(local.base_url + "/admin/")
        assert response.status == 503
        assert "You are still logged in" in page.content()
        shot(page, tmp_path, "local-503")
    finally:
        local.make("ctl", f"ARGS=start {program}")
    deadline = time.monotonic() + 15
    while requests.get(local.base_url + "/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "/healthz not 200 after the sessions Redis started"
        time.sleep(0.2)
    response = page.goto(local.base_url + "/admin/")
    assert response.status == 200 and page.url == local.base_url + "/admin/"
    assert logged_in(page), "the browser had to log in again"
    shot(page, tmp_path, "local-admin-after-outage")
