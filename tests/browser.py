"""Debian's headless Chromium driven by Playwright, for the browser tests.

Playwright for Python, not Selenium: its pip wheel carries its own driver, so
nothing has to match Chromium's version (Selenium needs Debian's chromium-driver
of the same build), and it reports what these tests check without scraping
logs: cookies with their Secure/HttpOnly flags, console messages and page
errors as events, and a DevTools session for the HSTS redirect. Its own
browser download is never used: it launches /usr/bin/chromium.
"""

import contextlib
import os
from pathlib import Path

import pytest
from conftest import require

# Chromium as root needs --no-sandbox; the rest keep it from calling Google
# (refused here), so that nothing but the site shows up in its logs.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
]


def chromium_path():
    return require("chromium")


@contextlib.contextmanager
def chromium(home, resolve=None, extra_args=()):
    """A headless Chromium with its own HOME (profile, NSS certificate db).

    resolve: a host name that Chromium's resolver maps to 127.0.0.1.
    """
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # it is in requirements.txt: bootstrap.sh installs it
        message = "playwright is not installed (bootstrap.sh installs requirements.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    args = [*CHROMIUM_ARGS, *extra_args]
    if resolve:
        args.append(f"--host-resolver-rules=MAP {resolve} 127.0.0.1")
    Path(home).mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=args, env={**os.environ, "HOME": str(home)}
        )
        try:
            yield browser
        finally:
            browser.close()


class Watch:
    """Console errors, page errors, failed requests and mixed content of one page."""

    def __init__(self, page):
        self.problems = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", lambda request: self.problems.append(f"failed: {request.url} {request.failure}"))

    def _console(self, message):
        if message.type == "error" or "Mixed Content" in message.text:
            self.problems.append(f"console {message.type}: {message.text} ({message.location.get('url')})")


def shot(page, directory, name):
    """Save a full-page screenshot as a test artefact; returns its path."""
    path = Path(directory) / "screenshots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000, path
    return path


def log_in(page, base_url, username, password):
    """The admin login through the real form; returns the CSRF token the form carried."""
    response = page.goto(f"{base_url}/admin/")
    assert response.status == 200 and "/admin/login/" in page.url, page.url
    token = page.input_value('input[name="csrfmiddlewaretoken"]')
    assert len(token) >= 32
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_request(lambda r: r.method == "POST" and "/admin/login/" in r.url) as posted:
        with page.expect_navigation():
            page.click('input[type="submit"]')
    assert f"csrfmiddlewaretoken={token}" in posted.value.post_data  # the form's token went with the login
    assert page.url == f"{base_url}/admin/", page.url
    return token


def logged_in(page):
    return page.locator("#logout-form").count() == 1 and page.locator("#id_password").count() == 0
