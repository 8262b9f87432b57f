"""Two sites installed side by side by deploy/install.sh, probed as an attacker
would: as nginx's user, as `nobody` and as the other site's user on the
machine, and over the network (loopback only) at the edge.

Root only, like tests/test_deploy.py (run it under the machine-wide deploy
lock). Both sites use dedicated Redis instances; with redis=system every site
on the server shares Debian's instance, which the README says.
"""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import bake, require
from test_deploy import Server, nginx_running, require_root, supervisord_running, wait_gone

SITES = {"sst_sec_a": "a.socketstack.test", "sst_sec_b": "b.socketstack.test"}

# Runs as the probing account: each path -> "ok" or the error's name.
PROBE = r"""
import json, os, socket, sys
results = {}
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "connect":
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
        elif kind == "list":
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        results[path] = "ok"
    except OSError as error:
        results[path] = type(error).__name__
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def sites(cookies_session, tmp_path_factory):
    require_root()
    require("curl")
    for slug in SITES:
        if Path(f"/webapps/{slug}").exists() or Path(f"/etc/supervisor/conf.d/{slug}.conf").exists():
            pytest.fail(f"/webapps/{slug} exists already: run its deploy/uninstall.sh first")
    nginx_before, supervisord_before = nginx_running(), supervisord_running()
    installed = {}
    try:
        for slug, domain in SITES.items():
            project = bake(cookies_session, project_slug=slug, domain_name=domain, redis="dedicated")
            site = Server(project, tmp_path_factory.mktemp(slug), "dedicated", domain=domain)
            installed[slug] = site
            site.install("first run")
        yield installed
    finally:
        for site in installed.values():
            if site.installed():
                site.uninstall()
        if supervisord_before is None and (pid := supervisord_running()):
            subprocess.run(["supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "shutdown"], capture_output=True)
            wait_gone(pid)
        if nginx_before is None and (pid := nginx_running()):
            subprocess.run(["nginx", "-s", "quit"], capture_output=True)
            wait_gone(pid)


def probe(user, targets):
    """{path: "ok" | "PermissionError" | ...} for (kind, path) pairs, as `user`."""
    result = subprocess.run(
        ["runuser", "-u", user, "--", "/usr/bin/python3", "-c", PROBE, json.dumps([[k, str(p)] for k, p in targets])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def upload(site):
    """A media file saved the way Django saves uploads, as the app user."""
    code = (
        "from django.core.files.base import ContentFile;"
        "from django.core.files.storage import default_storage as s;"
        "s.delete('probe/upload.txt');"
        "print(s.save('probe/upload.txt', ContentFile(b'uploaded')))"
    )
    site.manage("shell", "-c", code)
    return site.app_root / "media" / "probe" / "upload.txt"


def secrets_of(site):
    """What no account but the app's own (and root) may reach."""
    root = site.app_root
    return [
        ("read", root / ".env"),
        ("read", root / "var" / "db" / "db.sqlite3"),
        ("list", root / "var" / "redis-sessions"),
        ("list", root / "var"),
        ("read", root / "logs" / "gunicorn.log"),
        ("list", root / "logs"),
        ("read", root / "manage.py"),
        ("read", root / site.slug / "settings.py"),
        ("read", root / "deploy" / "install.sh"),
        ("read", root / ".venv" / "pyvenv.cfg"),
        ("list", root),
        ("list", root / "run"),
        ("connect", root / "run" / "redis-sessions.sock"),
        ("connect", root / "run" / "redis-cache.sock"),
        ("connect", root / "run" / "gunicorn.ctl"),
    ]


def web_files_of(site):
    """What nginx must reach and everybody else must not."""
    return [
        ("connect", site.app_root / "run" / "gunicorn.sock"),
        ("read", site.app_root / "static" / "admin" / "css" / "base.css"),
        ("read", upload(site)),
        ("read", site.app_root / "deploy" / "nginx" / "50x.html"),
    ]


def test_nginx_user_reaches_socket_static_media_and_nothing_else(sites):
    for site in sites.values():
        targets = secrets_of(site)
        for path in (t[1] for t in targets):
            assert path.exists(), path  # a missing file would be refused for the wrong reason
        web = web_files_of(site)
        results = probe("www-data", targets + web)
        reached = {path for path, outcome in results.items() if outcome == "ok"}
        assert reached == {str(path) for _, path in web}, results
        # And through nginx itself.
        status, _, body = site.get("/media/probe/upload.txt")
        assert (status, body) == (200, "uploaded")
        assert site.get("/healthz")[0] == 200


@pytest.mark.parametrize("who", ["nobody", "other site's user"])
def test_other_accounts_reach_nothing(sites, who):
    a, b = sites.values()
    for site, other in ((a, b), (b, a)):
        user = "nobody" if who == "nobody" else other.slug
        targets = secrets_of(site) + web_files_of(site)
        results = probe(user, targets)
        assert set(results.values()) == {"PermissionError"}, results


def test_accounts_and_groups(sites):
    """nginx's user is in each site's <slug>-web group and in no app group."""
    groups = subprocess.run(["id", "-nG", "www-data"], capture_output=True, text=True).stdout.split()
    for site in sites.values():
        assert f"{site.slug}-web" in groups
        assert site.slug not in groups
        app_groups = subprocess.run(["id", "-nG", site.slug], capture_output=True, text=True).stdout.split()
        assert app_groups == [site.slug], app_groups


def test_uninstall_removes_the_web_group(sites):
    """Last: uninstall.sh takes nginx's user out of the site's groups and deletes them."""
    for site in sites.values():
        result = site.uninstall()
        assert result.returncode == 0, result.stdout + result.stderr
        for group in (site.slug, f"{site.slug}-web"):
            assert subprocess.run(["getent", "group", group], capture_output=True).returncode == 2, group
        assert not site.app_root.exists()
    groups = subprocess.run(["id", "-nG", "www-data"], capture_output=True, text=True).stdout.split()
    assert not [group for group in groups if group.startswith("sst_sec_")], groups
