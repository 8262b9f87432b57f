"""Refresh the lock files that the template ships, one pair per Django choice.

    .venv/bin/python tools/lock.py

For each `django_version` it bakes a project (no .venv, no Redis check), runs
the project's own `make lock` code there (deploy/checkout.py, with uv) and
copies requirements.lock and requirements-dev.lock back into
{{cookiecutter.project_slug}}/locks/django-<version>/. Then it sets the ruff
version of the template's .pre-commit-config.yaml to the locked one. Run it
after changing the dependencies in the template's pyproject.toml (a template
test fails until you do), or to move to newer releases; then run the tests.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent
PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
TOOLS = Path(sys.executable).parent


def load(path):
    spec = importlib.util.spec_from_file_location("checkout", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_for(version):
    """The pre-gen hook checks the interpreter: give one that fits (the lock itself needs none)."""
    if version == "5.2":
        return sys.executable
    found = [shutil.which(name) for name in ("python3.12", "python3.13", "python3.14")]
    found += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1[2-9]*/bin/python3"))
    check = ["-c", "import sys; assert sys.version_info >= (3, 12)"]
    runs = (path for path in filter(None, found) if subprocess.run([path, *check], capture_output=True).returncode == 0)
    return next(runs, "python3.12")


def main():
    versions = json.loads((TEMPLATE / "cookiecutter.json").read_text())["django_version"]
    env = {**os.environ, "SOCKETSTACK_SKIP_VENV": "1", "SOCKETSTACK_SKIP_REDIS_CHECK": "1"}
    ruff = set()
    for version in versions:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [TOOLS / "cookiecutter", "--no-input", "-o", tmp, str(TEMPLATE), f"django_version={version}",
                 f"python={python_for(version)}"],
                env=env, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            project = Path(tmp) / "my_site"
            checkout = load(project / "deploy" / "checkout.py")
            target = PROJECT / "locks" / f"django-{version}"
            target.mkdir(parents=True, exist_ok=True)
            for path in checkout.lock(project, uv=shutil.which("uv") or str(TOOLS / "uv")):
                shutil.copy(path, target / path.name)
                print(f"{target.relative_to(TEMPLATE)}/{path.name}")
            ruff.add(checkout.ruff_pin(project))
    if len(ruff) != 1:
        sys.exit(f"the locks pin different ruff versions {sorted(ruff)}: run tools/lock.py again")
    pre_commit = PROJECT / ".pre-commit-config.yaml"
    text = re.sub(r"(ruff-pre-commit\s*\n\s*rev: )v\S+", rf"\g<1>v{ruff.pop()}", pre_commit.read_text())
    pre_commit.write_text(text)


if __name__ == "__main__":
    main()
