"""The owner's workflow on a baked project: `make dev`, `make app`, `make check`."""

import os
import signal
import subprocess
import time

import pytest
import requests
from conftest import bake, free_port, run

pytestmark = pytest.mark.stack


def wait_for(check, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout} s")


def test_make_dev_shows_edits_at_once_on_the_stacks_redis(stack, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    edited = {
        stack.project / "web" / "templates" / "web" / "home.html": ("</main>", "<p>edited-template</p></main>"),
        stack.project / "web" / "views.py": ('{"project_name": "', '{"project_name": "edited-python '),
    }
    originals = {path: path.read_text() for path in edited}
    with open(tmp_path / "dev.log", "wb") as log:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "dev", f"DEV_PORT={port}"],
            cwd=stack.project,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200, "runserver answered")
        # The same settings and Redis sockets as the stack: /healthz pings both stores.
        assert requests.get(f"{url}/healthz", timeout=5).json()["checks"] == {
            "database": "ok",
            "cache": "ok",
            "sessions": "ok",
        }
        # DEBUG on: Django's technical 404 page lists the URL patterns.
        missing = requests.get(f"{url}/no-such-page", timeout=5)
        assert missing.status_code == 404 and "healthz" in missing.text
        assert "edited" not in requests.get(f"{url}/", timeout=5).text
        for path, (old, new) in edited.items():
            assert old in originals[path], path
            path.write_text(originals[path].replace(old, new, 1))
        # A template edit and a Python edit (autoreload) both show on the next page view.
        wait_for(lambda: "edited-template" in requests.get(f"{url}/", timeout=5).text, "template edit shown")
        wait_for(lambda: "edited-python" in requests.get(f"{url}/", timeout=5).text, "Python edit reloaded")
    finally:
        for path, text in originals.items():
            path.write_text(text)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    assert requests.get(f"{stack.base_url}/healthz", timeout=5).status_code == 200


def test_make_app_keeps_make_check_green(cookies):
    project = bake(cookies, venv=True, project_name="appcheck")
    result = run(["make", "--no-print-directory", "app", "NAME=shop"], project)
    assert "added to INSTALLED_APPS" in result.stdout
    assert '    "shop",\n' in (project / "appcheck" / "settings.py").read_text()
    assert (project / "shop" / "apps.py").exists()
    run(["make", "--no-print-directory", "check"], project)
    refused = run(["make", "--no-print-directory", "app", "NAME=Bad-Name"], project, check=False)
    assert refused.returncode != 0
    assert refused.stdout.splitlines()[0].startswith("make app: NAME='Bad-Name' is not a lowercase Python name")
    assert not (project / "Bad-Name").exists()
