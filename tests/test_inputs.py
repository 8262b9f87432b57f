"""Bad answers are refused before anything is written.

Each case runs the real `cookiecutter` command, as a user would, and checks
that the first thing printed names the field and the value, that the exit
code is non-zero and that no project directory is left behind.
"""

import shlex
import subprocess
import sys

import pytest
from conftest import TEMPLATE, load_hook, python_for

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


def cookiecutter(tmp_path, *answers, path="/usr/bin:/bin"):
    tmp_path.mkdir(exist_ok=True)
    config = tmp_path / "config.yaml"
    config.write_text(f"replay_dir: {tmp_path / 'replay'}\ncookiecutters_dir: {tmp_path / 'cc'}\n")
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "--config-file", str(config), "-o", str(out)]
    result = subprocess.run(
        [*command, str(TEMPLATE), *answers],
        capture_output=True,
        text=True,
        env={"SOCKETSTACK_SKIP_VENV": "1", "SOCKETSTACK_SKIP_REDIS_CHECK": "1", "PATH": path},
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


def test_python_default_follows_what_is_installed(tmp_path):
    """Django 6.1 and no `python` answer: Debian's python3 when it is new enough
    (Debian 13), else a newer python3.N on PATH; with neither (Debian 12 alone)
    the hook's first line says what to install."""
    system = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info >= (3, 12))"],
                            capture_output=True, text=True, check=True).stdout.strip() == "True"  # fmt: skip
    result, out = cookiecutter(tmp_path / "system", "django_version=6.1")
    if system:
        assert result.returncode == 0, result.stderr
        assert "PYTHON ?= python3\n" in (out / "my_site" / "Makefile").read_text()
    else:
        first_line = next(line for line in result.stderr.splitlines() if line.strip())
        assert first_line.startswith("ERROR: python: 'python3' is not valid: it is Python 3."), first_line
        assert "needs >= 3.12: install one (`uv python install 3.13`" in first_line, first_line
        assert "or choose django_version=5.2" in first_line and list(out.iterdir()) == []
    newer = python_for("6.1")
    if newer is None:
        pytest.skip("no Python >= 3.12 here")
    name = subprocess.run([newer, "-c", "import sys; print('python%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / name).symlink_to(newer)
    result, out = cookiecutter(tmp_path / "newer", "django_version=6.1", path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    assert f"PYTHON ?= {'python3' if system else name}\n" in (out / "my_site" / "Makefile").read_text()


def test_good_answers_bake(tmp_path):
    result, out = cookiecutter(tmp_path, "project_name=Fine Site", "local_port=8123", f"python={sys.executable}")
    assert result.returncode == 0, result.stderr
    assert (out / "fine_site" / "manage.py").exists()


def test_refused_answer_comes_with_a_command_that_keeps_the_others(tmp_path):
    """After the error line: a ready command with every other answer and the refused
    one marked. With the mark replaced, it bakes what the user meant."""
    answers = ["project_name=Corner Shop", "email=shop@example.com", "timezone=Europe/Berlin", "nginx_page_cache=no"]
    result, out = cookiecutter(tmp_path, *answers, "local_port=80", f"python={sys.executable}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("ERROR: local_port: '80' is not valid:"), lines[:3]
    assert "replace local_port=<1024-65535>" in lines[1], lines[1]
    words = shlex.split(lines[2])
    assert words[:2] == ["cookiecutter", str(TEMPLATE)] and "--no-input" in words
    for answer in [*answers, "local_port=<1024-65535>"]:
        assert answer in words, (answer, words)
    fixed = ["local_port=8123" if word == "local_port=<1024-65535>" else word for word in words[2:]]
    (tmp_path / "retry").mkdir()
    retry, out = cookiecutter(
        tmp_path / "retry", *[word for word in fixed if word not in ("--no-input", str(TEMPLATE))]
    )
    assert retry.returncode == 0, retry.stderr
    project = out / "corner_shop"
    env = (project / ".env").read_text()
    assert "LOCAL_PORT=8123" in env
    assert "shop@example.com" in (project / "pyproject.toml").read_text()
    assert not (project / "deploy" / "nginx" / "page-cache.conf").exists()


def test_retry_command_never_carries_a_secret():
    hook = load_hook("pre_gen_project")
    context = {"_template": "gh:owner/tpl", "project_name": "Shop", "local_port": "80",
               "django_secret_key": "s3cr3t-v4", "admin_password": "hunter2-x", "nginx_page_cache": True}  # fmt: skip
    try:
        hook.check_port(context["local_port"])
    except hook.InvalidAnswer as error:
        command = hook.retry_command(context, error)
    assert "s3cr3t-v4" not in command and "hunter2-x" not in command
    assert shlex.split(command) == [
        "cookiecutter", "gh:owner/tpl", "--no-input",
        "project_name=Shop", "local_port=<1024-65535>", "nginx_page_cache=yes",
    ]  # fmt: skip
