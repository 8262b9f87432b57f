"""Shared helpers for the template's tests.

Bakes skip the per-project .venv (SOCKETSTACK_SKIP_VENV=1) unless a test asks
for a real one; those tests run the baked project with its own .venv.
"""

import functools
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pytest_cookies.plugin import Cookies

TEMPLATE = Path(__file__).resolve().parent.parent
TOOLS = Path(sys.executable).parent
# cookiecutter.json's `_extensions` (local_extensions.py): cookiecutter puts the
# template on sys.path while it renders, but pytest-cookies renders the context
# once before calling it.
sys.path.append(str(TEMPLATE))
OPTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text())
# The matrix: every list option with each of its values, every boolean both
# ways. The other answers are free text, checked by the pre-gen hook.


def matrix_choices(options):
    return {
        key: value if isinstance(value, list) else [value, not value]
        for key, value in options.items()
        if not key.startswith("_") and isinstance(value, list | bool)
    }


CHOICES = matrix_choices(OPTIONS)
# Answers that the matrix does not vary, on purpose: free text (validated by
# hooks/pre_gen_project.py) and values derived from a choice (python).
FREE_TEXT = {
    "project_name",
    "project_slug",
    "description",
    "author_name",
    "email",
    "domain_name",
    "timezone",
    "local_port",
    "python",
}


def unvaried_options(options):
    """Answers that the matrix does not vary and FREE_TEXT does not name as free text."""
    choices = matrix_choices(options)
    return sorted(
        key
        for key, value in options.items()
        if not key.startswith("_") and key not in choices and not (key in FREE_TEXT and isinstance(value, str))
    )


# nginx and redis-server may live where a normal user's PATH does not look.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin")


def require(binary):
    """Path of a binary the tests need: a failure in CI, a skip on a laptop."""
    found = shutil.which(binary) or next((f"{d}/{binary}" for d in SBIN if os.access(f"{d}/{binary}", os.X_OK)), None)
    if found:
        return found
    message = f"{binary} is not installed (bootstrap.sh installs it with apt-get)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# Debian's libnginx-mod-http-brotli-static, as deploy/render.py looks for it.
BROTLI_MODULE = Path("/usr/lib/nginx/modules/ngx_http_brotli_static_module.so")


def require_brotli_module():
    """nginx's brotli_static module: a failure in CI, a skip on a laptop."""
    if BROTLI_MODULE.exists():
        return BROTLI_MODULE
    message = f"{BROTLI_MODULE} is missing (bootstrap.sh installs libnginx-mod-http-brotli-static)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def python_for(django_version):
    """An interpreter new enough for the Django choice, or None."""
    if django_version == "5.2":
        return sys.executable
    candidates = [shutil.which(name) for name in ("python3.12", "python3.13", "python3.14")]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1[2-9]*/bin/python3"))
    for candidate in filter(None, candidates):
        # The interpreter itself, not a pyenv shim (a shell script that costs
        # a fraction of a second on every start).
        code = "import sys; assert sys.version_info >= (3, 12); print(sys.executable)"
        ok = subprocess.run([candidate, "-c", code], capture_output=True, text=True)
        if ok.returncode == 0:
            return ok.stdout.strip()
    return None


def context_for(**choices):
    """Extra context for a bake: the choices plus an interpreter that fits them."""
    context = dict(choices)
    django_version = context.get("django_version", "5.2")
    python = python_for(django_version)
    if python is None:
        message = f"no Python >= 3.12 for django_version={django_version}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    context.setdefault("python", python)
    return context


def all_combinations():
    keys = sorted(CHOICES)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(CHOICES[k] for k in keys))]


def project_module(project, relative):
    """Import one of a baked project's own Python files (SLUG/env.py,
    deploy/local_stack.py), so that the tests use its helpers, not copies."""
    path = project / relative
    spec = importlib.util.spec_from_file_location(f"{project.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # local_stack.py imports render.py next to it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_hook(name):
    spec = importlib.util.spec_from_file_location(name, TEMPLATE / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Projects baked with a real .venv usually run a stack, and unix socket paths
# are limited to 107 bytes: those are baked into short directories in /tmp
# (removed at the end of the session) instead of pytest's deep tmp paths.
SHORT_DIRS = []


def short_output_dir(name):
    path = Path(tempfile.mkdtemp(prefix="sst-", dir="/tmp"))
    SHORT_DIRS.append(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _remove_short_dirs():
    yield
    for path in SHORT_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def bake(cookies, venv=False, **choices):
    """Bake with pytest-cookies; return the project path (asserting success)."""
    env = {"SOCKETSTACK_SKIP_VENV": "0" if venv else "1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    if venv:
        cookies = Cookies(cookies._default_template, short_output_dir, cookies._config_file)
    try:
        result = cookies.bake(extra_context=context_for(**choices))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert result.exception is None, result.exception
    assert result.exit_code == 0
    return Path(result.project_path)


def run(command, cwd, env=None, timeout=300, check=True):
    """Run a command, show its output on failure."""
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def free_port():
    """A free port on 127.0.0.1: the template's one helper for it, in tools/bench.py."""
    spec = importlib.util.spec_from_file_location("bench", TEMPLATE / "tools" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.free_port()


def processes():
    """(pid, command line, /proc entry) of every process but this one."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        yield int(entry.name), cmdline, entry


def pids_matching(predicate):
    """PIDs of the processes (but this one) whose command line predicate(cmdline) accepts."""
    return [pid for pid, cmdline, _ in processes() if predicate(cmdline)]


def project_processes(project):
    """PIDs of processes that belong to a baked project: run from it or named after it."""
    project = str(project)
    found = []
    for pid, cmdline, entry in processes():
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if project in cmdline or cwd == project or cwd.startswith(project + "/"):
            found.append(pid)
    return found


class Stack:
    """A baked project whose local stack (`make up`) is running."""

    def __init__(self, project):
        self.project = project
        # The project package (the one with env.py): the folder may have been renamed.
        env_py = next(project.glob("*/env.py"))
        self.slug = env_py.parent.name
        env = project_module(project, env_py.relative_to(project)).read_env_file(project / ".env")
        self.port = int(env["LOCAL_PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"

    def make(self, *targets, check=True, timeout=180, env=None):
        return run(["make", "--no-print-directory", *targets], self.project, env=env, timeout=timeout, check=check)

    def manage(self, *args, env=None):
        return run([self.project / ".venv" / "bin" / "python", "manage.py", *args], self.project, env=env)

    def create_admin(self, password, username="admin"):
        """A superuser made the documented way: createsuperuser --noinput."""
        self.manage(
            "createsuperuser",
            "--noinput",
            "--username",
            username,
            "--email",
            f"{username}@example.com",
            env={"DJANGO_SUPERUSER_PASSWORD": password},
        )
        return username, password

    def login_form(self):
        """GET the admin login form the way a browser does: (requests session, CSRF token)."""
        import requests

        session = requests.Session()
        form = session.get(f"{self.base_url}/admin/login/?next=/admin/", allow_redirects=False, timeout=10)
        assert form.status_code == 200, form.text[:500]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        return session, token

    def post_login(self, session, token, username, password):
        """POST the login form with its CSRF token; the response, not followed."""
        return session.post(
            f"{self.base_url}/admin/login/?next=/admin/",
            data={"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"},
            headers={"Referer": f"{self.base_url}/admin/login/"},
            allow_redirects=False,
            timeout=10,
        )

    def supervisor(self):
        """supervisord's XML-RPC interface, through the project's own deploy/local_stack.py."""
        if not hasattr(self, "_local_stack"):
            self._local_stack = project_module(self.project, "deploy/local_stack.py")
        return self._local_stack.rpc().supervisor

    def redis(self, name):
        import redis

        return redis.Redis(unix_socket_path=str(self.project / "run" / f"redis-{name}.sock"), socket_timeout=2)

    def processes(self):
        return project_processes(self.project)

    def log(self, name):
        path = self.project / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""


def start_stack(cookies, **choices):
    """Bake with a real .venv on a free port and run `make up`."""
    require("redis-server")
    require("nginx")
    project = bake(cookies, venv=True, local_port=str(free_port()), **choices)
    stack = Stack(project)
    stack.make("up")
    return stack


def stop_stack(stack):
    """`make down`, then prove nothing of the project is left running."""
    stack.make("down")
    leftovers = stack.processes()
    for pid in leftovers:  # never leave strays behind, even when failing
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert leftovers == [], f"processes left after make down: {leftovers}"
    assert list((stack.project / "run").glob("*.sock")) == []


@pytest.fixture(scope="session")
def stack(cookies_session):
    """The default bake, running; shared by the end-to-end tests."""
    running = start_stack(cookies_session)
    yield running
    stop_stack(running)


# The matrix, baked once per session ----------------------------------------------


def combo_id(combo):
    """A readable test id: the values in key order, e.g. 5.2-True-dedicated-cache."""
    return "-".join(f"{value}" for _, value in sorted(combo.items()))


MATRIX_DOMAIN = "socketstack.test"


def bake_command(output_dir, config_file, **answers):
    """The `cookiecutter --no-input` command line a user would type for these answers."""
    words = [f"{key}={'yes' if v is True else 'no' if v is False else v}" for key, v in answers.items()]
    return [
        sys.executable, "-m", "cookiecutter", "--no-input", "--config-file", str(config_file),
        "-o", str(output_dir), str(TEMPLATE), *words,
    ]  # fmt: skip


def run_parallel(jobs, workers=2):
    """Run {key: (command, cwd, env)} in a pool of threads; {key: CompletedProcess}."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        command, cwd, env = job
        return subprocess.run(
            [str(part) for part in command], cwd=cwd, env={**os.environ, **(env or {})},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    with ThreadPoolExecutor(workers) as pool:
        futures = {key: pool.submit(one, job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.fixture(scope="session")
def matrix(tmp_path_factory):
    """Every combination of the choices, baked once without .venv: {combo id: (project, combo)}.

    Each bake is its own `cookiecutter` process (two at a time: the machine
    has two cores), so nothing is shared between them but the template.
    The hook's Redis check is skipped here: test_hooks and test_faults run it.
    """
    root = tmp_path_factory.mktemp("matrix")
    config = root / "config.yaml"
    config.write_text(f"replay_dir: {root / 'replay'}\ncookiecutters_dir: {root / 'cc'}\n")
    jobs, baked = {}, {}
    for number, combo in enumerate(all_combinations()):
        key = combo_id(combo)
        # A number, not the id: each option makes the ids longer, and the
        # local stack's socket paths must stay within 107 bytes.
        out = root / f"c{number:02d}"
        out.mkdir()
        answers = context_for(domain_name=MATRIX_DOMAIN, **combo)
        env = {"SOCKETSTACK_SKIP_VENV": "1", "SOCKETSTACK_SKIP_REDIS_CHECK": "1"}
        jobs[key] = (bake_command(out, config, **answers), root, env)
        baked[key] = (out / "my_site", combo)
    results = run_parallel(jobs)
    failed = {key: r.stderr[-2000:] for key, r in results.items() if r.returncode != 0}
    assert failed == {}, failed
    return baked


def django_python(project, combo):
    """An interpreter with the Django that the combination asks for.

    5.2 is the tooling's own; 6.1 gets a venv cached in ~/.cache, keyed by the
    interpreter and the project's dependencies, so `check` of a 6.1 bake runs
    Django 6.1 (only the first session pays for the install, about 2 s with uv).
    """
    if combo["django_version"] == "5.2":
        return sys.executable
    import hashlib
    import tomllib

    python = python_for(combo["django_version"])
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(json.dumps([python, dependencies, "bytecode"]).encode()).hexdigest()[:16]
    venv = Path.home() / ".cache" / "socketstack-tests" / f"django-{combo['django_version']}-{key}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        uv = TOOLS / "uv"
        run([uv, "venv", "--quiet", "--python", python, venv], project)
        run(
            [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", venv / "bin" / "python", *dependencies],
            project,
        )
        (venv / ".complete").touch()
    return venv / "bin" / "python"


def commit_and_clone(project):
    """git init + commit a baked project, then clone it into a new short directory.

    The clone is what a teammate, CI or a server gets: no .env, .venv or run/.
    """
    require("git")
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    run([*git, "init", "-q", "-b", "main"], project)
    run([*git, "add", "-A"], project)
    run([*git, "commit", "-q", "-m", "Baked"], project)
    clone = short_output_dir("clone") / project.name
    run([*git, "clone", "-q", str(project), str(clone)], project.parent)
    for name in (".env", ".venv", "run"):
        assert not (clone / name).exists(), f"{name} was committed"
    return clone
