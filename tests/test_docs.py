"""The generated README and docs/ name only files the bake has, and follow the options."""

import re

import pytest
from conftest import bake

# What `make up`, `make venv` and the server create at run time: named in the
# docs, never baked.
RUNTIME = ("run/", "logs/", "var/", "static/", "media/", ".venv", "db.sqlite3", "appendonlydir/", "<", ".cruft.json")
# Made by a command the docs name (`make wheelhouse`), never part of a bake.
MADE_LATER = ("wheelhouse/",)
EXTENSIONS = "py|md|conf|sh|html|lock|toml|yml|yaml|css|json"
# A relative path (a/b, a/b/, a/*.conf) or a bare file name with a known
# extension; never the tail of an absolute path or a URL.
PATH = re.compile(rf"(?<![\w/.:<>$-])((?:[\w.*<>-]+/)+[\w.*-]*|[\w.*-]+\.(?:{EXTENSIONS}))(?![\w(.])")
OPTIONS = [
    {"redis": "dedicated", "nginx_page_cache": True},
    {"redis": "system", "nginx_page_cache": False, "session_engine": "cached_db"},
    {"redis": "dedicated", "nginx_page_cache": True, "database": "postgresql"},
]


def named_paths(text):
    """Paths in `code`, in [links](...) and in fenced blocks of a Markdown text."""
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)]+)\)", text)
    spans += re.findall(r"^```\w*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return {match for span in spans for match in PATH.findall(span)}


def missing_paths(project):
    missing = []
    for doc in [project / "README.md", *sorted((project / "docs").glob("*.md"))]:
        for name in named_paths(doc.read_text()):
            if name.startswith(RUNTIME + MADE_LATER) or "shop" in name or ">" in name or name[0].isdigit():
                continue
            # Anywhere in the bake: a tree listing names a file below its folder.
            found = list(project.glob("**/" + name.rstrip("/")))
            if not found:
                missing.append(f"{doc.relative_to(project)}: {name}")
    return missing


@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: "-".join(map(str, options.values())))
def test_docs_name_only_files_the_bake_has(cookies, options):
    project = bake(cookies, **options)
    assert missing_paths(project) == []


def test_the_check_catches_a_missing_file(cookies):
    project = bake(cookies)
    (project / "docs" / "runbook.md").write_text("See `tests/test_faults.py` and [the plan](docs/plan.md).\n")
    expected = ["docs/runbook.md: docs/plan.md", "docs/runbook.md: tests/test_faults.py"]
    assert sorted(missing_paths(project)) == expected


def test_readme_is_the_owners_manual(cookies):
    for options in OPTIONS:
        project = bake(cookies, **options)
        readme = (project / "README.md").read_text()
        assert len(readme.splitlines()) <= 250
        headings = [line for line in readme.splitlines() if line.startswith("## ")]
        assert headings[:3] == ["## Quick start", "## Develop", "## Settings and the `.env` file"], headings
        assert "make dev" in readme.split("## Develop")[0]  # the quick start already says how to develop
        assert "make app NAME=shop" in readme  # the way to add an app that keeps `make check` green
        dedicated = options["redis"] == "dedicated"
        for text in [readme, *(path.read_text() for path in (project / "docs").glob("*.md"))]:
            assert ("redis-sessions.sock" in text) <= dedicated
        assert ("run/redis-cache.sock ──> Redis (cache)" in readme) == dedicated
        assert ("/run/redis/redis-server.sock ──> Debian's Redis" in readme) != dedicated
        assert (project / "docs" / "page-cache.md").exists() == options["nginx_page_cache"]
