"""Template updates with cruft: bake at an older commit, change it as its owner, update to HEAD.

Real git, real cruft (the tooling's), real stacks; the template source is this
repository's own git directory (see tests/cruft_site.py). Bakes with a .venv
are made once per module and older commit, and shared by the tests in order.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import TEMPLATE, TOOLS, bake, load_hook, pids_matching, require, run, short_output_dir
from cruft_site import (
    OLD_COMMITS,
    OWNER_LINE,
    OWNER_PAGE,
    add_skip_list,
    commit_all,
    conflicts,
    cruft,
    cruft_create,
    dirty_template,
    owner_changes,
    template_commit,
    tool_env,
    update_to,
)

post = load_hook("post_gen_project")
GENERATED_PATHS = Path(__file__).with_name("generated-paths.json")
TIMINGS = {}


def port_in_range():
    """A free port of 19000-19999 on 127.0.0.1 (this branch's range on a shared machine)."""
    import socket

    for port in range(19000 + os.getpid() % 500, 20000):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    pytest.fail("no free port in 19000-19999")


def make(project, *targets, check=True, timeout=600, **env):
    return run(["make", "-C", str(project), *targets], project, env=tool_env(**env), timeout=timeout, check=check)


@pytest.fixture(scope="module", autouse=True)
def _report_timings():
    yield
    for label, seconds in TIMINGS.items():
        print(f"test_update {label}: {seconds:.1f} s")


# The hook recognises cruft's scratch bakes -----------------------------------------


def test_scratch_bake_is_recognised_by_cruft_context_and_a_fresh_temp_dir(tmp_path):
    import tempfile

    context = {"_template": "/t", "_commit": "abc", "project_slug": "shop"}
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "shop"
        project.mkdir()
        assert post.is_cruft_scratch_bake(context, project)
        # Plain cookiecutter puts _output_dir in the context, and no _commit.
        assert not post.is_cruft_scratch_bake({**context, "_output_dir": scratch}, project)
        assert not post.is_cruft_scratch_bake({"_template": "/t", "project_slug": "shop"}, project)
        # cruft create into a directory that holds something else too.
        (Path(scratch) / "other").mkdir()
        assert not post.is_cruft_scratch_bake(context, project)
    # cruft create into the user's directory (here pytest's tmp_path).
    (tmp_path / "shop").mkdir()
    assert not post.is_cruft_scratch_bake(context, tmp_path / "shop")


def test_cruft_create_at_head_writes_env_and_a_diff_bake_writes_none(tmp_path):
    """Under `cruft create` the hook does what it does under cookiecutter: .env, .venv, make check passes."""
    require("git")
    head = template_commit("HEAD")
    project = cruft_create(head, tmp_path, venv=True)
    make(project, "check")
    env = project / ".env"
    assert env.stat().st_mode & 0o777 == 0o600
    secret = re.search(r"^DJANGO_SECRET_KEY=(.+)$", env.read_text(), re.MULTILINE).group(1)
    state = (project / ".cruft.json").read_text()
    assert secret not in state and "SECRET" not in state.upper()
    assert json.loads(state)["commit"] == head
    commit_all(project, "Baked with cruft")
    diff = cruft("diff", "--exit-code", cwd=project, check=False)
    # The scratch bake said so, wrote no .env, and nothing differs (.env is skipped anyway).
    assert "cruft's scratch bake" in diff.stdout, diff.stdout + diff.stderr
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_cruft_link_command_in_the_docs_links_a_cookiecutter_bake(tmp_path):
    require("git")
    head = template_commit("HEAD")
    # Plain cookiecutter, from the committed HEAD (the commit the link names).
    source = tmp_path / "template"
    run(["git", "clone", "-q", str(TEMPLATE), str(source)], tmp_path)
    run(["git", "checkout", "-q", head], source)
    answers = ["project_name=Linked Shop", "local_port=8123", "session_engine=cached_db"]
    run([TOOLS / "cookiecutter", "--no-input", "-o", tmp_path / "out", source, *answers], tmp_path,
        env=tool_env(SOCKETSTACK_SKIP_VENV="1"))  # fmt: skip
    project = tmp_path / "out" / "linked_shop"
    commit_all(project, "Baked with cookiecutter")
    docs = (project / "docs" / "updating.md").read_text()
    block = re.search(r"```sh\n(\.venv/bin/python -m cruft link .*?)```", docs, re.DOTALL).group(1)
    script = (
        block.replace(".venv/bin/python -m cruft", str(TOOLS / "cruft"))
        .replace("<template commit>", head)
        .replace("gh:<owner>/cookiecutter-django-socketstack", str(TEMPLATE))
    )
    env = tool_env(GIT_AUTHOR_NAME="Owner", GIT_AUTHOR_EMAIL="o@example.com", GIT_COMMITTER_NAME="Owner",
                   GIT_COMMITTER_EMAIL="o@example.com")  # fmt: skip
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=project, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == head and state["context"]["cookiecutter"]["session_engine"] == "cached_db"
    # The answers in the docs are the bake's own: the template at that commit gives the same files.
    diff = cruft("diff", "--exit-code", cwd=project, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr


# Older commit -> HEAD, with the owner's changes --------------------------------------


class UpdatedSite:
    def __init__(self, name, project, port, owned, env_before, update_result):
        self.name = name
        self.project = project
        self.port = port
        self.owned = owned
        self.env_before = env_before
        self.update_result = update_result


@pytest.fixture(scope="module", params=sorted(OLD_COMMITS))
def site(request):
    """cruft create at the older commit (with its .venv), the owner's changes, cruft update to HEAD."""
    require("git")
    require("redis-server")
    require("nginx")
    old, head = template_commit(OLD_COMMITS[request.param]), template_commit("HEAD")
    if dirty_template():
        print("test_update: the template has uncommitted changes; the update goes to the committed HEAD")
    port = port_in_range()
    started = time.monotonic()
    project = cruft_create(old, short_output_dir("upd"), venv=True, project_name="Corner Shop", local_port=str(port))
    TIMINGS[f"{request.param}: cruft create with .venv"] = time.monotonic() - started
    commit_all(project, f"Baked with cruft at {old[:7]}")
    add_skip_list(project)
    owned = owner_changes(project)
    env_before = (project / ".env").read_text()
    result, seconds = update_to(project, head)
    TIMINGS[f"{request.param}: cruft update to HEAD"] = seconds
    updated = UpdatedSite(request.param, project, port, owned, env_before, result)
    try:
        yield updated
    finally:
        if (project / "run").exists() and (project / ".venv").exists():
            make(project, "down", check=False)


def test_update_merges_without_touching_the_owners_files(site):
    project = site.project
    found = conflicts(project)
    assert found.returncode == 0, found.stderr
    for relative, text in site.owned.items():
        assert (project / relative).read_text() == text, relative
    assert (project / ".env").read_text() == site.env_before
    assert OWNER_LINE in site.env_before
    # The update brought HEAD's machinery and docs; the new hook knew its scratch bake.
    assert (project / "docs" / "updating.md").exists() and (project / "deploy" / "update.py").exists()
    assert "cruft's scratch bake" in site.update_result.stdout
    assert json.loads((project / ".cruft.json").read_text())["commit"] == template_commit("HEAD")
    if site.name == "before-redesign":
        assert not (project / "web" / "middleware.py").exists()
        assert (project / "corner_shop" / "middleware.py").exists()


def test_cruft_json_holds_no_secret(site):
    secret = re.search(r"^DJANGO_SECRET_KEY=(.+)$", site.env_before, re.MULTILINE).group(1)
    state = (site.project / ".cruft.json").read_text()
    assert secret not in state and OWNER_LINE not in state


def test_relock_then_make_update_runs_the_tests_and_checks(site):
    """The first update's last steps (docs/updating.md), then `make update` itself, with nothing left to merge."""
    project = site.project
    commit_all(project, "Update from the template")
    started = time.monotonic()
    lock = make(project, "lock")
    make(project, "venv")
    TIMINGS[f"{site.name}: make lock + make venv"] = time.monotonic() - started
    assert "Wrote requirements.lock" in lock.stdout
    commit_all(project, "Lock files for the new dependencies")
    started = time.monotonic()
    result = make(project, "update", f"CHECKOUT={template_commit('HEAD')}")
    TIMINGS[f"{site.name}: make update (tests and checks)"] = time.monotonic() - started
    out = result.stdout + result.stderr
    assert "Nothing to do" in out and "without conflict" in out and "make update: done" in out, out
    assert re.search(r"\d+ passed", out), out
    assert "tests/test_shop.py ." in out, out
    # The preview: the owner's own edit of a template file shows (read in reverse); .env never does.
    preview = make(project, "update-preview", f"CHECKOUT={template_commit('HEAD')}").stdout
    secret = re.search(r"^DJANGO_SECRET_KEY=(.+)$", site.env_before, re.MULTILINE).group(1)
    assert OWNER_PAGE in preview and secret not in preview and OWNER_LINE not in preview, preview
    assert not re.search(r"^(diff --git|[-+]{3}) \S*\.env\b", preview, re.MULTILINE), preview


def test_make_up_serves_the_owners_page_and_migration(site):
    project = site.project
    make(project, "up", timeout=180)
    try:
        base = f"http://127.0.0.1:{site.port}"
        home = requests.get(f"{base}/", timeout=10)
        assert home.status_code == 200 and OWNER_PAGE in home.text
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        shown = run([project / ".venv" / "bin" / "python", "manage.py", "showmigrations", "shop"], project)
        assert "[X] 0001_initial" in shown.stdout
    finally:
        make(project, "down")


# A conflicting owner edit ------------------------------------------------------------------


@pytest.mark.parametrize("in_git", [True, False], ids=["git", "no-git"])
def test_owner_edit_of_a_machinery_file_conflicts_and_fails(tmp_path, in_git):
    """The template changed deploy/nginx/locations.conf's header after fb1b611^1; so did the owner."""
    require("git")
    project = cruft_create(template_commit(OLD_COMMITS["before-redesign"]), tmp_path)
    add_skip_list(project, commit=in_git)
    locations = project / "deploy" / "nginx" / "locations.conf"
    owner_line = "# OWNER: the shop's own note on what the site serves"
    text = locations.read_text()
    assert "# @APP_ROOT@ is the project root" in text
    locations.write_text(re.sub(r"^# @APP_ROOT@ is the project root.*$", owner_line, text, count=1, flags=re.M))
    if in_git:
        commit_all(project, "Owner: a note in locations.conf")
    env_before = (project / ".env").read_text()
    update_to(project, template_commit("HEAD"))
    found = conflicts(project)
    assert found.returncode == 1
    assert found.stderr.startswith("make update: 1 file(s) need a hand: deploy/nginx/locations.conf"), found.stderr
    after = locations.read_text()
    # Never a silent overwrite: the owner's line is still there, with markers or a .rej beside it.
    assert owner_line in after
    if in_git:
        assert "<<<<<<<" in after and ">>>>>>>" in after
    else:
        assert (project / "deploy" / "nginx" / "locations.conf.rej").exists()
    assert (project / ".env").read_text() == env_before


# Template-side guard: moved or removed generated files -------------------------------------


def generated_paths(project):
    skip = {".env", ".cruft.json"}
    return sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file() and p.name not in skip)


def unhandled_removals(recorded, baked, updating_md):
    """Paths a recorded template version generated that HEAD does not, which docs/updating.md does not name.

    The docs may name the file or its folder (web/sessions/ for web/sessions/cache.py).
    """
    removed = {path for paths in recorded.values() for path in paths} - set(baked)
    return sorted(path for path in removed if path not in updating_md and f"{Path(path).parent}/" not in updating_md)


def unhandled_etc_names(recorded, install_sh):
    """/etc names an older install.sh wrote that this one neither writes (step_retire_old_files) nor retires."""
    current = re.search(r"local current=\(([^)]*)\)", install_sh).group(1)
    current += " " + re.search(r'current\+=\(("[^"]*")\)', install_sh).group(1)
    retired = re.search(r"^RETIRED_FILES=\(([^)]*)\)", install_sh, re.M).group(1)
    names = {
        "$SUPERVISOR_CONF": "/etc/supervisor/conf.d/$SLUG.conf",
        "$NGINX_SITE": "/etc/nginx/sites-available/$SLUG.conf",
        "$NGINX_LOCATIONS": "/etc/nginx/snippets/$SLUG-locations.conf",
    }
    written = set(re.findall(r'"([^"]+)"', current + " " + retired))
    written = {names.get(name, name) for name in written}
    return sorted(set(recorded) - written)


def test_removed_generated_paths_are_handled_by_the_update_path(cookies):
    recorded = json.loads(GENERATED_PATHS.read_text())
    project = bake(cookies)
    baked = generated_paths(project)
    docs = (project / "docs" / "updating.md").read_text()
    assert unhandled_removals(recorded["project"], baked, docs) == []
    install_sh = (TEMPLATE / "{{cookiecutter.project_slug}}" / "deploy" / "install.sh").read_text()
    assert unhandled_etc_names(recorded["etc"], install_sh) == []


def test_the_guard_catches_a_rename_nobody_handled(cookies):
    recorded = json.loads(GENERATED_PATHS.read_text())
    project = bake(cookies)
    baked = [path for path in generated_paths(project) if path != "deploy/nginx/locations.conf"]
    docs = (project / "docs" / "updating.md").read_text()
    assert unhandled_removals(recorded["project"], baked, docs) == ["deploy/nginx/locations.conf"]
    install_sh = (TEMPLATE / "{{cookiecutter.project_slug}}" / "deploy" / "install.sh").read_text()
    line = re.search(r"local current=\(.*\)", install_sh).group(0)
    renamed = install_sh.replace(line, line.replace("$NGINX_LOCATIONS", "/etc/nginx/snippets/$SLUG-where.conf"))
    assert unhandled_etc_names(recorded["etc"], renamed) == ["/etc/nginx/snippets/$SLUG-locations.conf"]


# A deployed site, updated across template versions (root, real install.sh) -----------------


def etc_files(slug):
    """Files and links under /etc/nginx and /etc/supervisor named after the site."""
    found = set()
    for base in (Path("/etc/nginx"), Path("/etc/supervisor")):
        found |= {str(path) for path in base.rglob(f"*{slug}*") if path.is_file() or path.is_symlink()}
    return found


def pids_with(text):
    return pids_matching(lambda cmdline: text in cmdline)


def test_deployed_site_updated_across_versions_keeps_sessions_and_leaves_nothing_old(tmp_path_factory):
    """install.sh of fb1b611^1, cruft update to HEAD, git pull, install.sh of HEAD.

    Every template version so far installed the same /etc names, so an older
    layout's leftovers are planted the way a future rename would leave them: a
    supervisor program file and an nginx snippet that the last install recorded
    in /var/lib/socketstack/<slug>.files and this version no longer writes.
    """
    from test_deploy import (
        DOMAIN,
        Server,
        nginx_running,
        require_root,
        stop_daemons_started_since,
        supervisord_running,
        wait_gone,
    )

    require_root()
    require("curl")
    require("git")
    slug = "sst_update"
    if Path(f"/webapps/{slug}").exists() or Path(f"/etc/supervisor/conf.d/{slug}.conf").exists():
        pytest.fail(f"/webapps/{slug} or its supervisor program exists already: run its deploy/uninstall.sh first")
    nginx_before, supervisord_before = nginx_running(), supervisord_running()
    owner = cruft_create(template_commit(OLD_COMMITS["before-redesign"]), short_output_dir("updsrv"),
                         project_name="sst update", domain_name=DOMAIN)  # fmt: skip
    assert owner.name == slug
    commit_all(owner, "Baked with cruft")
    add_skip_list(owner)
    owner_changes(owner)
    checkout = short_output_dir("updclone") / slug
    run(["git", "clone", "-q", str(owner), str(checkout)], owner.parent)
    server = Server(checkout, tmp_path_factory.mktemp("update-deploy"), {"redis": "dedicated"})
    retired_conf = Path(f"/etc/supervisor/conf.d/{slug}-retired.conf")
    retired_snippet = Path(f"/etc/nginx/snippets/{slug}-retired.conf")
    ctl = ["supervisorctl", "-c", "/etc/supervisor/supervisord.conf"]
    try:
        server.install("old version")
        server.create_admin()
        server.login()
        status, _, body = server.get("/admin/")
        assert status == 200 and "Log out" in body
        old_files = etc_files(slug)
        assert f"/etc/supervisor/conf.d/{slug}.conf" in old_files
        # The older layout's leftovers, as the last install recorded them.
        retired_conf.write_text(f"[program:{slug}-retired]\ncommand=/bin/sleep 911\nautostart=true\n")
        retired_snippet.write_text("# an nginx snippet an older version installed\n")
        Path(f"/var/lib/socketstack/{slug}.files").write_text(f"{retired_conf}\n{retired_snippet}\n")
        subprocess.run([*ctl, "update"], capture_output=True, check=True)
        deadline = time.monotonic() + 10
        while not pids_with("/bin/sleep 911") and time.monotonic() < deadline:
            time.sleep(0.1)
        (retired_pid,) = pids_with("/bin/sleep 911")

        # The owner updates, relocks and commits; the server pulls and installs.
        result, seconds = update_to(owner, template_commit("HEAD"))
        TIMINGS["deploy: cruft update to HEAD"] = seconds
        assert conflicts(owner).returncode == 0
        run(["make", "lock"], owner, env=tool_env())
        commit_all(owner, "Update from the template")
        run(["git", "pull", "-q", "--ff-only"], checkout)
        server.install("new version")

        status, _, body = server.get("/admin/")
        assert status == 200 and "Log out" in body, "the session did not survive the update"
        status, _, body = server.get("/")
        assert status == 200 and OWNER_PAGE in body
        assert not retired_conf.exists() and not retired_snippet.exists()
        assert wait_gone(retired_pid, timeout=10), "the old layout's program still runs"
        assert f"{slug}-retired" not in subprocess.run([*ctl, "status"], capture_output=True, text=True).stdout
        manifest = set(Path(f"/var/lib/socketstack/{slug}.files").read_text().split())
        # Under /etc: exactly what this version installs, nothing of the old one beside it.
        assert etc_files(slug) == manifest
        assert old_files <= manifest
        # The code that moved is gone from the app root too (rsync --delete).
        for moved in ("web/middleware.py", "web/sessions", "deploy/bench.py"):
            assert not (server.app_root / moved).exists(), moved
        assert not pids_with(f"{server.app_root}/deploy/bench.py")
        for label, seconds in server.timings.items():
            TIMINGS[f"deploy: install.sh {label}"] = seconds
    finally:
        if server.installed():
            server.uninstall()
        for path in (retired_conf, retired_snippet):
            if path.exists():
                path.unlink()
                subprocess.run([*ctl, "update"], capture_output=True)
        stop_daemons_started_since(nginx_before, supervisord_before)
    assert not Path(f"/var/lib/socketstack/{slug}.files").exists()
