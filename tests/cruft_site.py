"""Sites baked with cruft at an older commit of this template, changed by their owner, updated.

The template source is this repository's own git directory (cruft clones it
and checks out the commit), so the tests need the full history, which CI's
clone of main has. They update to the committed HEAD: uncommitted changes in
the template are not part of an update (`dirty_template()` says so).
"""

import json
import os
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from conftest import TEMPLATE, TOOLS, run

# The commit before the redesign (owner's code in web/, machinery in the
# project package) and one after it.
OLD_COMMITS = {"before-redesign": "fb1b611^1", "after-redesign": "55c8c62"}
GIT = ["git", "-c", "user.name=Owner", "-c", "user.email=owner@example.com", "-c", "init.defaultBranch=main"]
OWNER_LINE = "SHOP_GREETING=fresh bread daily"
OWNER_PAGE = "Corner shop: fresh bread daily"


def template_commit(rev):
    result = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=TEMPLATE,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"template commit {rev} is not in {TEMPLATE}'s history: the update tests need a full clone")
    return result.stdout.strip()


def dirty_template():
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=TEMPLATE,
                         capture_output=True, text=True).stdout  # fmt: skip
    return bool(out.strip())


def tool_env(**extra):
    """The tooling's cruft and uv first on PATH; no Redis probe in any bake."""
    env = {**os.environ, "PATH": f"{TOOLS}:{os.environ['PATH']}", "SOCKETSTACK_SKIP_REDIS_CHECK": "1"}
    env.update(extra)
    return env


def cruft(*args, cwd, venv=False, check=True, timeout=600):
    env = tool_env(SOCKETSTACK_SKIP_VENV="0" if venv else "1")
    result = subprocess.run([TOOLS / "cruft", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    if check and result.returncode != 0:
        pytest.fail(f"cruft {' '.join(map(str, args))} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def cruft_create(commit, output_dir, venv=False, **answers):
    """`cruft create` at `commit` of this template; return the project directory."""
    answers = {"project_name": "Corner Shop", **answers}
    cruft("create", "--no-input", "--checkout", commit, "--output-dir", output_dir,
          "--extra-context", json.dumps(answers), TEMPLATE, cwd=output_dir, venv=venv)  # fmt: skip
    (project,) = [path for path in Path(output_dir).iterdir() if (path / ".cruft.json").exists()]
    return project


def git(project, *args):
    return run([*GIT, *args], project)


def commit_all(project, message):
    if not (project / ".git").exists():
        git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "--allow-empty", "-m", message)


def skip_list():
    """The skip list of the generated pyproject.toml: the same for the one-off step of older sites."""
    text = (TEMPLATE / "{{cookiecutter.project_slug}}" / "pyproject.toml").read_text()
    block = text[text.index("[tool.cruft]") :]
    return tomllib.loads(block.split("\n[tool.pytest", 1)[0])["tool"]["cruft"]["skip"]


def add_skip_list(project, commit=True):
    """The one step docs/updating.md asks of a site baked before `make update` existed."""
    path = project / ".cruft.json"
    state = json.loads(path.read_text())
    state["skip"] = skip_list()
    path.write_text(json.dumps(state, indent=2) + "\n")
    if commit:
        commit_all(project, "cruft: never update secrets, venv, runtime data or locks")


APP_FILES = {
    "shop/__init__.py": "",
    "shop/apps.py": """from django.apps import AppConfig


class ShopConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "shop"
""",
    "shop/models.py": """from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self):
        return self.name
""",
    "shop/migrations/__init__.py": "",
    "shop/migrations/0001_initial.py": """from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Product",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
            ],
        ),
    ]
""",
    "tests/test_shop.py": """import pytest

from shop.models import Product


@pytest.mark.django_db
def test_products_are_kept():
    Product.objects.create(name="Bread")
    assert str(Product.objects.get()) == "Bread"
""",
}


def owner_changes(project):
    """A new app with a migration and a test, a changed home page, an extra .env line; committed.

    Returns {relative path: content} of the owner's files, to compare after the update.
    """
    slug = json.loads((project / ".cruft.json").read_text())["context"]["cookiecutter"]["project_slug"]
    for relative, text in APP_FILES.items():
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    settings = project / slug / "settings.py"
    text = settings.read_text()
    assert '    "web",\n' in text
    settings.write_text(text.replace('    "web",\n', '    "web",\n    "shop",\n', 1))
    home = project / "web" / "templates" / "web" / "home.html"
    home.write_text(home.read_text().replace("<main>\n", f'<main>\n    <p class="offer">{OWNER_PAGE}</p>\n', 1))
    env = project / ".env"
    if env.exists():
        env.write_text(env.read_text() + OWNER_LINE + "\n")
    commit_all(project, "Owner: the shop app, an offer on the home page")
    owned = [*APP_FILES, "web/templates/web/home.html"]
    return {relative: (project / relative).read_text() for relative in owned}


def update_to(project, commit):
    """cruft update to `commit`, as docs/updating.md says for a first update; return (result, seconds)."""
    started = time.monotonic()
    result = cruft("update", "--skip-apply-ask", "--allow-untracked-files", "--checkout", commit, cwd=project)
    return result, time.monotonic() - started


def conflicts(project):
    """deploy/update.py conflicts, the check `make update` runs after cruft."""
    return subprocess.run(["python3", "deploy/update.py", "conflicts"], cwd=project, capture_output=True, text=True)
