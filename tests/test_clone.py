"""A baked project is a repository: committed, cloned elsewhere, it works.

A clone has no .env, .venv or run/ (none is committed). Its CI workflow's own
`run:` steps pass on it; a teammate's `make venv && make env && make up`
serves the site; the folder can move; the lock files match pyproject.toml.
"""

import os
import re
import shutil
import sys
import tempfile

import pytest
import requests
import yaml
from conftest import (
    CHOICES,
    TOOLS,
    Stack,
    bake,
    commit_and_clone,
    free_port,
    require,
    run,
    short_output_dir,
    stop_stack,
)

ADMIN_PASSWORD = "clone-test-" + "pw-4q8z" * 3
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NEEDS_VENV = ("dev", "up", "down", "status", "reload", "shell", "ctl", "test", "check", "superuser", "loadtest")
NEEDS_VENV += ("backup",)


def workflow(project):
    return yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())


def test_ci_workflow_parses_and_every_step_is_uses_or_run(cookies):
    for version in CHOICES["django_version"]:
        steps = workflow(bake(cookies, django_version=version))["jobs"]["test"]["steps"]
        assert steps
        for step in steps:
            assert ("uses" in step) != ("run" in step), step
            assert set(step) <= {"name", "uses", "with", "run"}, step
        assert [step["run"] for step in steps if "run" in step][-2:] == ["make test", "make check"]


def test_ci_steps_pass_on_a_clean_clone(cookies, tmp_path):
    """The workflow's `run:` lines, read from the YAML, one by one on a fresh clone."""
    if os.geteuid() != 0 and not shutil.which("sudo"):
        if os.environ.get("CI"):
            pytest.fail("the workflow's apt-get step needs root or sudo")
        pytest.skip("the workflow's apt-get step needs root or sudo")
    clone = commit_and_clone(bake(cookies))
    # setup-python's `python`, without uv (GitHub's runners have none): the
    # pip fallback. The system interpreter, as on a runner.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(shutil.which("python3", path=SYSTEM_PATH))
    env = {"PATH": f"{bin_dir}:{SYSTEM_PATH}", "CI": "true"}
    ran = []
    for step in workflow(clone)["jobs"]["test"]["steps"]:
        if "run" not in step:
            continue
        command = step["run"]
        if os.geteuid() == 0:
            command = re.sub(r"(^|&&\s*)sudo\s+", r"\1", command)
        result = run(["bash", "-eo", "pipefail", "-c", command], clone, env=env, timeout=900, check=False)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        ran.append(command)
        print(f"ok: {command}")
    assert ran[-2:] == ["make test", "make check"]
    assert not (clone / ".env").exists()  # the tests made their own settings
    assert "passed" in result.stdout or "All checks passed" in result.stdout


@pytest.fixture
def clone_without_venv(cookies):
    return commit_and_clone(bake(cookies, local_port=str(free_port())))


def test_make_targets_without_venv_give_a_one_line_hint(clone_without_venv):
    for target in NEEDS_VENV:
        result = run(["make", target], clone_without_venv, check=False)
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode != 0, target
        assert len(lines) == 1, (target, lines)
        assert f"make {target}: no .venv in this checkout: run `make venv` first" in lines[0]
    assert not (clone_without_venv / ".venv").exists()


def test_make_up_without_env_says_make_env(clone_without_venv):
    (clone_without_venv / ".venv" / "bin").mkdir(parents=True)
    (clone_without_venv / ".venv" / "bin" / "python").symlink_to(sys.executable)
    result = run(["make", "up"], clone_without_venv, check=False)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, lines
    assert "make up: no .env in this checkout: run `make env` first" in lines[0]
    assert not (clone_without_venv / "run").exists()


def test_make_env_writes_a_private_env_and_refuses_to_overwrite(clone_without_venv):
    env_file = clone_without_venv / ".env"
    run(["make", "env"], clone_without_venv)
    assert env_file.stat().st_mode & 0o777 == 0o600
    before = (env_file.read_bytes(), env_file.stat().st_mtime_ns, env_file.stat().st_mode)
    result = run(["make", "env"], clone_without_venv, check=False)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        f"{env_file}: exists, kept as it is. Delete it first for a new one (a new key ends every session)."
    )
    assert (env_file.read_bytes(), env_file.stat().st_mtime_ns, env_file.stat().st_mode) == before
    assert sorted(path.name for path in clone_without_venv.glob(".env*")) == [".env"]


def test_make_venv_refuses_a_stale_lock(clone_without_venv):
    pyproject = clone_without_venv / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"gunicorn>=25.1",', '"gunicorn>=25.1",\n    "requests>=2",'))
    result = run(["make", "venv", f"PYTHON={sys.executable}"], clone_without_venv, check=False)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0].startswith("requirements.lock: does not match the dependencies in pyproject")
    assert not (clone_without_venv / ".venv").exists()


@pytest.mark.stack
def test_teammate_clone_venv_env_up_and_admin_login(cookies):
    """git clone ... && make venv && make env && make up: 200 through nginx, and the admin login works."""
    require("redis-server")
    require("nginx")
    clone = commit_and_clone(bake(cookies, local_port=str(free_port())))
    env = {"PATH": f"{TOOLS}:{SYSTEM_PATH}"}  # uv on PATH: the fast path
    run(["make", "venv", f"PYTHON={sys.executable}"], clone, env=env)
    run(["make", "env"], clone, env=env)
    stack = Stack(clone)
    try:
        stack.make("up", env=env)
        assert requests.get(f"{stack.base_url}/", timeout=10).status_code == 200
        username, password = stack.create_admin(ADMIN_PASSWORD)
        session, token = stack.login_form()
        response = stack.post_login(session, token, username, password)
        assert response.status_code == 302 and response.headers["Location"] == "/admin/", response.text[:500]
        assert session.get(f"{stack.base_url}/admin/", allow_redirects=False, timeout=10).status_code == 200
    finally:
        stop_stack(stack)


@pytest.mark.stack
def test_moved_folder_still_comes_up(cookies):
    """Bake (with .venv), move the folder elsewhere, `make up`: 200."""
    require("redis-server")
    require("nginx")
    baked = bake(cookies, venv=True, local_port=str(free_port()))
    moved = short_output_dir("moved") / "renamed_site"
    shutil.move(baked, moved)
    stack = Stack(moved)
    try:
        stack.make("up")
        response = requests.get(f"{stack.base_url}/healthz", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["checks"] == {"database": "ok", "cache": "ok", "sessions": "ok"}
        # The sockets are in the new place; nothing points at the old one.
        assert (moved / "run" / "redis-sessions.sock").is_socket()
        assert not baked.exists()
    finally:
        stop_stack(stack)


# The lock files ------------------------------------------------------------------


def pinned(checkout_module, path):
    return {name: set(reqs) for name, reqs in checkout_module.pins(path).items()}


@pytest.mark.parametrize("version", CHOICES["django_version"])
def test_shipped_locks_match_pyproject_and_each_other(cookies, version):
    project = bake(cookies, django_version=version)
    result = run([sys.executable, "deploy/checkout.py", "check-lock"], project)
    assert "match pyproject.toml" in result.stdout
    from test_hooks import load_checkout

    checkout = load_checkout()
    server, dev = (pinned(checkout, project / name) for name in ("requirements.lock", "requirements-dev.lock"))

    # The server runs the very pins the tests ran: its lock is a subset of the dev lock. Markers may
    # differ (a dev tool such as cruft needs tzdata everywhere, Django only on Windows); versions may not.
    def versions(reqs):
        return {req.split(";")[0].strip() for req in reqs or ()}

    assert server and all(versions(dev.get(name)) == versions(reqs) for name, reqs in server.items()), (server, dev)
    assert {"pytest", "ruff", "uv"} <= set(dev) - set(server)
    assert any(req.startswith(f"django=={version}.") for req in server["django"])
    minimum = "3.10" if version == "5.2" else "3.12"
    assert f"Every Python >= {minimum}" in (project / "requirements.lock").read_text()
    # Every line that pins something carries hashes (pip's --require-hashes).
    text = (project / "requirements-dev.lock").read_text()
    assert text.count("--hash=sha256:") >= len(dev)
    assert not (project / "locks").exists()


def test_pre_commit_ruff_is_the_locked_ruff(cookies):
    project = bake(cookies)
    rev = re.search(r"ruff-pre-commit\s*\n\s*rev: v(\S+)", (project / ".pre-commit-config.yaml").read_text()).group(1)
    locked = re.search(r"^ruff==(\S+)", (project / "requirements-dev.lock").read_text(), re.M).group(1)
    assert rev == locked
    # And `make check` runs that ruff: the one in .venv, from the same lock.
    assert "$(PY) -m ruff check ." in (project / "Makefile").read_text()


def test_second_bootstrap_installs_nothing():
    """The template's own set-up: .venv's tooling is reinstalled only when requirements.txt changes."""
    from conftest import TEMPLATE

    if not (TEMPLATE / ".venv" / ".tooling-requirements.sha256").exists():
        pytest.skip("this .venv was not made by bootstrap.sh")
    # Its own --basetemp: the default one may be in use by this very run.
    command = ["./bootstrap.sh", "test", "--co", "-q", "--basetemp", tempfile.mkdtemp(), "tests/test_inputs.py"]
    result = run(command, TEMPLATE, timeout=600)
    assert "tooling in .venv is up to date (requirements.txt unchanged)" in result.stdout
    assert "installing" not in result.stdout + result.stderr
    assert not (TEMPLATE / "setup.py").exists() and "[project]" not in (TEMPLATE / "pyproject.toml").read_text()
