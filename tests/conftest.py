"""Shared helpers for the template's tests.

Bakes skip the per-project .venv (SOCKETSTACK_SKIP_VENV=1) unless a test asks
for a real one; those tests run the baked project with its own .venv.
"""

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parent.parent
TOOLS = Path(sys.executable).parent
CHOICES = {key: value for key, value in json.loads((TEMPLATE / "cookiecutter.json").read_text()).items() if isinstance(value, list)}
# nginx and redis-server may live where a normal user's PATH does not look.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin")


def require(binary):
    """Path of a binary the tests need: a failure in CI, a skip on a laptop."""
    found = shutil.which(binary) or next(
        (f"{d}/{binary}" for d in SBIN if os.access(f"{d}/{binary}", os.X_OK)), None
    )
    if found:
        return found
    message = f"{binary} is not installed (bootstrap.sh installs it with apt-get)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def python_for(django_version):
    """An interpreter new enough for the Django choice, or None."""
    if django_version == "5.2":
        return sys.executable
    candidates = [shutil.which(name) for name in ("python3.12", "python3.13", "python3.14")]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1[2-9]*/bin/python3"))
    for candidate in filter(None, candidates):
        ok = subprocess.run([candidate, "-c", "import sys; assert sys.version_info >= (3, 12)"], capture_output=True)
        if ok.returncode == 0:
            return candidate
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


def load_hook(name):
    spec = importlib.util.spec_from_file_location(name, TEMPLATE / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bake(cookies, venv=False, **choices):
    """Bake with pytest-cookies; return the project path (asserting success)."""
    env = {"SOCKETSTACK_SKIP_VENV": "0" if venv else "1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
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
