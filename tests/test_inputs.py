"""Bad answers are refused before anything is written.

Each case runs the real `cookiecutter` command, as a user would, and checks
that the first thing printed names the field and the value, that the exit
code is non-zero and that no project directory is left behind.
"""

import subprocess
import sys

import pytest
from conftest import TEMPLATE

BAD_ANSWERS = [
    ("project_slug", "My-Site"),
    ("project_slug", "class"),
    ("project_slug", "django"),
    ("project_slug", "json"),
    ("project_slug", "1site"),
    ("project_name", 'Quote " Site'),
    ("domain_name", "http://example.com"),
    ("domain_name", "localhost"),
    ("domain_name", "exa mple.com"),
    ("email", "not-an-email"),
    ("timezone", "Mars/Olympus_Mons"),
    ("local_port", "80"),
    ("local_port", "70000"),
    ("local_port", "eight"),
    ("python", "python-that-does-not-exist"),
]


def cookiecutter(tmp_path, *answers):
    config = tmp_path / "config.yaml"
    config.write_text(f"replay_dir: {tmp_path / 'replay'}\ncookiecutters_dir: {tmp_path / 'cc'}\n")
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "--config-file", str(config), "-o", str(out)]
    result = subprocess.run(
        [*command, str(TEMPLATE), *answers],
        capture_output=True,
        text=True,
        env={"SOCKETSTACK_SKIP_VENV": "1", "SOCKETSTACK_SKIP_REDIS_CHECK": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    return result, out


@pytest.mark.parametrize(("field", "value"), BAD_ANSWERS, ids=[f"{f}={v}" for f, v in BAD_ANSWERS])
def test_bad_answer_is_refused_cleanly(tmp_path, field, value):
    result, out = cookiecutter(tmp_path, f"{field}={value}")
    assert result.returncode != 0
    first_line = next(line for line in (result.stderr + result.stdout).splitlines() if line.strip())
    assert first_line.startswith(f"ERROR: {field}: {value!r} is not valid:"), first_line
    assert list(out.iterdir()) == []


def test_python_too_old_for_django_6(tmp_path):
    result, out = cookiecutter(tmp_path, "django_version=6.1", f"python={sys.executable}")
    first_line = next(line for line in result.stderr.splitlines() if line.strip())
    if sys.version_info >= (3, 12):
        pytest.skip("the test interpreter is new enough for Django 6.1")
    assert result.returncode != 0
    assert first_line.startswith("ERROR: python:") and "needs >= 3.12" in first_line, first_line
    assert list(out.iterdir()) == []


def test_good_answers_bake(tmp_path):
    result, out = cookiecutter(tmp_path, "project_name=Fine Site", "local_port=8123", f"python={sys.executable}")
    assert result.returncode == 0, result.stderr
    assert (out / "fine_site" / "manage.py").exists()
