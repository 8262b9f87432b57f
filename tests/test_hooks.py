"""Unit tests of the hook functions, imported straight from hooks/."""

import ast
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import TEMPLATE, bake, load_hook, require

pre = load_hook("pre_gen_project")
post = load_hook("post_gen_project")


# pre_gen_project ---------------------------------------------------------------


@pytest.mark.parametrize("slug", ["my_site", "shop2", "a"])
def test_good_slugs(slug):
    assert pre.check_slug(slug) == slug


@pytest.mark.parametrize("slug", ["My_site", "2shop", "my-site", "import", "redis", "gunicorn", "tests", "email", ""])
def test_bad_slugs(slug):
    with pytest.raises(pre.InvalidAnswer, match=r"^project_slug: "):
        pre.check_slug(slug)


@pytest.mark.parametrize("domain", ["example.com", "www.example.co.uk", "a-b.example"])
def test_good_domains(domain):
    assert pre.check_domain(domain) == domain


@pytest.mark.parametrize("domain", ["example", "Example.com", "-a.com", "a..com", "https://a.com", "a.com:80"])
def test_bad_domains(domain):
    with pytest.raises(pre.InvalidAnswer, match=r"^domain_name: "):
        pre.check_domain(domain)


def test_email_port_timezone_rules():
    assert pre.check_email("a.b@example.com")
    for email in ("nobody", "a@b", 'a"b@example.com'):
        with pytest.raises(pre.InvalidAnswer, match="^email: "):
            pre.check_email(email)
    assert pre.check_port("1024") == 1024 and pre.check_port("65535") == 65535
    for port in ("1023", "65536", "-1", "80a"):
        with pytest.raises(pre.InvalidAnswer, match="^local_port: "):
            pre.check_port(port)
    assert pre.check_timezone("Europe/Berlin")
    with pytest.raises(pre.InvalidAnswer, match="^timezone: "):
        pre.check_timezone("Europe/Atlantis")


def test_python_version_of_this_interpreter():
    assert pre.python_version(sys.executable) == sys.version_info[:2]
    assert pre.python_version("/nonexistent/python") is None
    assert pre.check_python(sys.executable, "5.2", "3.10") == sys.executable


def fake_pythons(directory, versions):
    """Interpreters that only answer python_version's question: {"python3": "3 11"}."""
    directory.mkdir(exist_ok=True)
    for name, answer in versions.items():
        (directory / name).write_text(f"#!/bin/sh\necho {answer}\n")
        (directory / name).chmod(0o755)
    return directory


def test_usable_python_prefers_python3_then_the_newest_that_fits(tmp_path, monkeypatch):
    assert pre.python_candidates("3.12")[:2] == ["python3", "python3.20"]
    assert pre.python_candidates("3.12")[-1] == "python3.12" and "python3.11" not in pre.python_candidates("3.12")
    # Debian 13: python3 is 3.13, and it serves both Django choices.
    monkeypatch.setenv("PATH", str(fake_pythons(tmp_path / "trixie", {"python3": "3 13"})))
    assert pre.usable_python("3.12") == "python3" and pre.usable_python("3.10") == "python3"
    # Debian 12 with a newer interpreter from pyenv or uv: that one for 6.1, python3 for 5.2.
    bookworm_plus = {"python3": "3 11", "python3.12": "3 12", "python3.13": "3 13"}
    monkeypatch.setenv("PATH", str(fake_pythons(tmp_path / "bookworm-plus", bookworm_plus)))
    assert pre.usable_python("3.12") == "python3.13" and pre.usable_python("3.10") == "python3"
    # Debian 12 alone: nothing fits 6.1.
    monkeypatch.setenv("PATH", str(fake_pythons(tmp_path / "bookworm", {"python3": "3 11"})))
    assert pre.usable_python("3.12") is None


def test_python_too_old_says_which_one_fits_or_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(pre, "os_release", lambda: "Debian 12")
    monkeypatch.setenv("PATH", str(fake_pythons(tmp_path / "bookworm", {"python3": "3 11"})))
    with pytest.raises(pre.InvalidAnswer) as refused:
        pre.check_python("python3", "6.1", "3.12")
    assert str(refused.value) == (
        "python: 'python3' is not valid: it is Python 3.11 here (Debian 12), and Django 6.1 needs >= 3.12: "
        "install one (`uv python install 3.13`, or pyenv) and answer python=$(uv python find 3.13), "
        "or choose django_version=5.2"
    )
    fake_pythons(tmp_path / "bookworm", {"python3.12": "3 12"})
    with pytest.raises(pre.InvalidAnswer, match=r"needs >= 3\.12: answer python=python3\.12 \(installed here\), or"):
        pre.check_python("python3", "6.1", "3.12")
    assert pre.check_python("python3.12", "6.1", "3.12") == "python3.12"


def test_os_release_names_the_release(tmp_path):
    release = tmp_path / "os-release"
    release.write_text(
        'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\nID=debian\n'
    )
    assert pre.os_release(release) == "Debian 13"
    assert pre.os_release(tmp_path / "missing") == ""


def test_python_default_follows_what_is_installed(tmp_path, monkeypatch):
    """cookiecutter.json's `python` default, rendered through local_extensions.py as cookiecutter does."""
    import jinja2

    spec = importlib.util.spec_from_file_location("local_extensions", TEMPLATE / "local_extensions.py")
    extensions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extensions)
    default = json.loads((TEMPLATE / "cookiecutter.json").read_text())["python"]
    environment = jinja2.Environment(extensions=[extensions.default_python])

    def rendered(min_python):
        return environment.from_string(default).render(cookiecutter={"__min_python": min_python})

    bookworm_plus = {"python3": "3 11", "python3.13": "3 13"}
    monkeypatch.setenv("PATH", str(fake_pythons(tmp_path / "bookworm-plus", bookworm_plus)))
    assert (rendered("3.10"), rendered("3.12")) == ("python3", "python3.13")
    monkeypatch.setenv("PATH", str(fake_pythons(tmp_path / "trixie", {"python3": "3 13"})))
    assert (rendered("3.10"), rendered("3.12")) == ("python3", "python3")
    monkeypatch.setenv("PATH", str(fake_pythons(tmp_path / "bookworm", {"python3": "3 11"})))
    assert rendered("3.12") == "python3"  # nothing fits: the hook then says what to install


def test_message_names_field_value_and_rule():
    message = str(pre.InvalidAnswer("local_port", "80", "use a number from 1024 to 65535"))
    assert message == "local_port: '80' is not valid: use a number from 1024 to 65535"


# post_gen_project ---------------------------------------------------------------

CONTEXT = {
    "redis": "dedicated",
    "session_engine": "cache",
    "database": "sqlite",
    "nginx_page_cache": True,
    "domain_name": "example.com",
    "local_port": "8000",
    "project_slug": "my_site",
}


def load_checkout():
    """The generated deploy/checkout.py, straight from the template (valid Python before rendering)."""
    import importlib.util

    path = TEMPLATE / "{{cookiecutter.project_slug}}" / "deploy" / "checkout.py"
    spec = importlib.util.spec_from_file_location("checkout", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_file_is_0600_with_fresh_key_no_path_and_never_overwritten(tmp_path):
    checkout = load_checkout()
    path = checkout.write_env(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    key = next(line for line in first.splitlines() if line.startswith("DJANGO_SECRET_KEY=")).split("=", 1)[1]
    assert len(key) >= 50 and len(set(key)) >= 5
    # No path at all: settings.py derives the sockets from the project's place.
    assert [line for line in first.splitlines() if "/" in line and not line.startswith("#")] == []
    with pytest.raises(checkout.CheckoutError, match=rf"^{path}: exists, kept as it is"):
        checkout.write_env(tmp_path)
    assert path.read_text() == first
    assert checkout.new_secret_key() != checkout.new_secret_key()


def test_venv_commands_install_the_lock_prefer_uv_and_compile_bytecode(tmp_path):
    checkout = load_checkout()
    lock = str(tmp_path / "requirements-dev.lock")
    with_uv = checkout.venv_commands(tmp_path, "/usr/bin/python3", uv="/bin/uv")
    assert with_uv[0][:2] == ["/bin/uv", "venv"] and "--relocatable" in with_uv[0]
    assert "--compile-bytecode" in with_uv[1] and with_uv[1][-2:] == ["-r", lock]
    without = checkout.venv_commands(tmp_path, "/usr/bin/python3")
    assert without[0] == ["/usr/bin/python3", "-m", "venv", str(tmp_path / ".venv")]
    assert without[1][-2:] == ["-r", lock]


def test_wheelhouse_judges_the_locks_markers_for_the_servers_python(tmp_path):
    checkout = load_checkout()
    applies = checkout.marker_applies
    assert applies(" python_full_version < '3.11.3'", "3.11.2") and not applies(
        "python_full_version < '3.11.3'", "3.13.5"
    )
    assert applies("python_full_version >= '3.11' and python_full_version < '3.13'", "3.12.1")
    assert not applies("python_full_version >= '3.11' and python_full_version < '3.13'", "3.13.0")
    assert applies("sys_platform == 'win32' or python_full_version < '3.11'", "3.10.4")
    assert applies("implementation_name != 'pypy'") and not applies("sys_platform == 'win32'")
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# a lock\ndjango==5.2.19 \\\n    --hash=sha256:cc\n"
        "async-timeout==5.0.1 ; python_full_version < '3.11.3' \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
    )
    assert checkout.locked_files(lock, "3.11.2") == [("django==5.2.19", {"cc"}), ("async-timeout==5.0.1", {"aa", "bb"})]
    assert checkout.locked_files(lock, "3.13.5") == [("django==5.2.19", {"cc"})]
    # A wheelhouse is judged by the hashes of its files, not their names.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "django-5.2.19-py3-none-any.whl").write_bytes(b"another file")
    with pytest.raises(
        checkout.CheckoutError, match=r"^WHEELHOUSE=.*/wheels: lacks django==5.2.19 \(requirements\.lock\)"
    ):
        checkout.check_wheelhouse(wheels, root=tmp_path)


def test_make_venv_refuses_a_python_older_than_requires_python_before_making_anything(tmp_path):
    checkout = load_checkout()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nrequires-python = ">=3.99"\n')
    with pytest.raises(checkout.CheckoutError) as refused:
        checkout.check_interpreter(sys.executable, tmp_path)
    found = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert str(refused.value).startswith(
        f"make venv: PYTHON={sys.executable} is Python {found}, and this project needs Python >= 3.99"
    )
    with pytest.raises(checkout.CheckoutError, match=r"^make venv: PYTHON=/no/python does not run"):
        checkout.check_interpreter("/no/python", tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nrequires-python = ">=3.10"\n')
    checkout.check_interpreter(sys.executable, tmp_path)
    assert not (tmp_path / ".venv").exists()


def test_remove_unused_files(tmp_path):
    (tmp_path / "deploy" / "redis").mkdir(parents=True)
    sessions = tmp_path / CONTEXT["project_slug"] / "sessions"
    sessions.mkdir(parents=True)
    for name in ("cache.py", "cached_db.py"):
        (sessions / name).write_text("")
    removed = post.remove_unused_files(tmp_path, CONTEXT)
    assert removed == [sessions / "cached_db.py"]
    assert (tmp_path / "deploy" / "redis").exists()
    post.remove_unused_files(tmp_path, {**CONTEXT, "redis": "system", "session_engine": "cached_db"})
    assert not (tmp_path / "deploy" / "redis").exists()
    assert not (sessions / "cache.py").exists()


def test_next_steps_mention_make_venv_only_when_needed(tmp_path):
    assert any("make venv" in step for step in post.next_steps(tmp_path, CONTEXT, venv_ok=False))
    assert not any("make venv" in step for step in post.next_steps(tmp_path, CONTEXT, venv_ok=True))


@pytest.fixture
def short_tmp():
    """A short directory for sockets (107-byte path limit)."""
    path = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve_once(path, reply):
    """A unix socket server that answers one connection with `reply`."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        conn.recv(64)
        conn.sendall(reply)
        conn.close()
        server.close()

    threading.Thread(target=answer, daemon=True).start()


def test_redis_ping_diagnoses(short_tmp):
    assert post.redis_ping(short_tmp / "none.sock") == (False, "missing")
    serve_once(short_tmp / "http.sock", b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert post.redis_ping(short_tmp / "http.sock") == (False, "not-redis")
    serve_once(short_tmp / "auth.sock", b"-NOAUTH Authentication required.\r\n")
    assert post.redis_ping(short_tmp / "auth.sock") == (False, "auth")


def test_check_redis_starts_the_real_configs(cookies, short_tmp):
    require("redis-server")
    project = bake(cookies)
    ok, lines = post.check_redis(project, {"redis": "dedicated"})
    assert ok, lines
    assert any("cache.conf: starts and answers PING" in line for line in lines)
    assert any("sessions.conf: starts and answers PING" in line for line in lines)
    # A config redis-server rejects is reported with its own complaint.
    (project / "deploy" / "redis" / "cache.conf").write_text("maxmemory-policy sometimes\n")
    ok, lines = post.check_redis(project, {"redis": "dedicated"})
    assert not ok
    assert any("cache.conf: does not start here" in line for line in lines), lines


def test_check_redis_system_socket(short_tmp):
    require("redis-server")
    sock = short_tmp / "sys.sock"
    ok, lines = post.check_redis(short_tmp, {"redis": "system"}, str(sock))
    assert not ok and "apt-get install redis-server" in lines[-1] and str(sock) in lines[-1]
    server = subprocess.Popen(
        [shutil.which("redis-server"), "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(short_tmp)],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if post.redis_ping(sock)[0]:
                break
            time.sleep(0.05)
        ok, lines = post.check_redis(short_tmp, {"redis": "system"}, str(sock))
        assert ok and lines[-1] == f"system Redis answers on {sock}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_check_redis_without_redis_server(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, lines = post.check_redis(tmp_path, {"redis": "dedicated"})
    assert not ok
    assert lines == ["redis-server is not installed. Run: sudo apt-get install redis-server"]


def test_hooks_keep_jinja_inside_string_literals():
    """The hooks are valid Python before rendering: every `{{ cookiecutter ... }}`
    sits in a string literal, so tools read them and the tests import them."""
    for module in (pre, post):
        source = Path(module.__file__).read_text()
        literals = [
            node.value
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ]
        assert source.count("{{ cookiecutter") >= 1
        assert source.count("{{ cookiecutter") == sum(text.count("{{ cookiecutter") for text in literals)


CODE = ("hooks", "tests", "tools", "local_extensions.py")


def test_template_code_is_ruff_clean():
    """The hooks and these tests follow the same rules as the generated code."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    for command in ([ruff, "check", *CODE], [ruff, "format", "--check", *CODE]):
        result = subprocess.run(command, cwd=Path(__file__).parent.parent, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_no_template_file_is_ignored_by_git():
    """The generated .gitignore applies to the template folder too: it must not hide template files."""
    root = Path(__file__).parent.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "{{cookiecutter.project_slug}}"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert [path for path in ignored if "__pycache__" not in path and ".egg-info" not in path] == []


def test_venv_without_uv_uses_venv_and_pip(cookies, monkeypatch):
    """The fallback path for machines without uv: python -m venv, then pip."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("uv") is None
    project = bake(cookies, venv=True, project_name="Nouv")
    python = project / ".venv" / "bin" / "python"
    check = "import django, django_redis, gunicorn, hiredis, supervisor, nouv.settings; print(django.__version__)"
    result = subprocess.run([python, "-c", check], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("5.2")
