"""deploy/install.sh on this machine, for real: system nginx on ports 80/443
with TLS, the system supervisor running gunicorn and Redis as the app user,
then deploy/uninstall.sh.

The server tests need root (CI runs as root on a fresh Debian 12 or 13); elsewhere
they are skipped. They reach the site through 127.0.0.1 only, with curl's
--resolve for the test domain, and check the self-signed certificate that
install.sh made. Daemons that the tests start (nginx, supervisord) are stopped
again at the end; ones that were already running are left running.

The server site of every option combination is rendered and checked with
`nginx -t` and gixy without installing anything, in test_matrix.py.
"""

import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import TOOLS, bake, commit_and_clone, context_for, project_module, project_processes, require, run

DOMAIN = "socketstack.test"
# Real installs: one per Redis choice, and Django 6.1 with the other values of
# the other choices. The slug names the user and /webapps/<slug>.
SERVERS = {
    "dedicated": {"project_slug": "sst_deploy", "redis": "dedicated"},
    "system": {"project_slug": "sst_deploy_sysredis", "redis": "system"},
    "django61": {
        "project_slug": "sst_deploy_dj61",
        "redis": "dedicated",
        "django_version": "6.1",
        "nginx_page_cache": False,
        "session_engine": "cached_db",
    },
}
CERT = Path("/etc/ssl/socketstack") / DOMAIN / "fullchain.pem"
ADMIN_PASSWORD = "deploy-test-" + "pw-7h2m" * 3
# Variables that would change what install.sh does: never inherit them.
INSTALL_ENV_DROP = ("DOMAIN", "APP_ROOT", "PYTHON", "SSL_CERTIFICATE", "SSL_CERTIFICATE_KEY")


# The real server ----------------------------------------------------------------


def nginx_running():
    try:
        pid = int(Path("/run/nginx.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def supervisord_running():
    result = subprocess.run(
        ["supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "pid"], capture_output=True, text=True
    ) if shutil.which("supervisorctl") else None  # fmt: skip
    if result is None or result.returncode != 0 or not result.stdout.strip().isdigit():
        return None
    return int(result.stdout.strip())


def wait_gone(pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def stop_daemons_started_since(nginx_before, supervisord_before):
    """Stop the system supervisord and nginx when they were not running before
    the test (the pids it saw then, or None): exactly what the test started."""
    if supervisord_before is None and (pid := supervisord_running()):
        subprocess.run(["supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "shutdown"], capture_output=True)
        wait_gone(pid)
    if nginx_before is None and (pid := nginx_running()):
        subprocess.run(["nginx", "-s", "quit"], capture_output=True)
        if not wait_gone(pid):
            os.kill(pid, 9)


class Server:
    """A baked project installed by deploy/install.sh, reached with curl."""

    def __init__(self, project, workdir, choices, python=None, domain=DOMAIN):
        self.project = project
        self.domain = domain
        self.cert = Path("/etc/ssl/socketstack") / domain / "fullchain.pem"
        self.slug = project.name
        self.app_root = Path("/webapps") / self.slug
        self.redis = choices["redis"]
        self.page_cache = choices.get("nginx_page_cache", True)
        self.python = python
        self.workdir = workdir
        self.jar = workdir / "cookies.txt"
        self.timings = {}
        self.outputs = {}
        self.port_80_at_return = {}

    def run_install_sh(self, label, env):
        """Run deploy/install.sh from the checkout with `env`; keep its time and output under `label`."""
        started = time.monotonic()
        result = subprocess.run(
            [self.project / "deploy" / "install.sh"], cwd=self.project, env=env, capture_output=True, text=True,
            timeout=1200,
        )  # fmt: skip
        self.timings[label] = time.monotonic() - started
        self.outputs[label] = result.stdout + result.stderr
        return result

    def install(self, label, check=True):
        env = {key: value for key, value in os.environ.items() if key not in INSTALL_ENV_DROP}
        if self.python:
            env["PYTHON"] = str(self.python)
        result = self.run_install_sh(label, env)
        # The moment install.sh says done, port 80 must answer with the new
        # config: the old nginx workers may not be answering any more.
        code, status, headers, _ = self.curl(f"http://{self.domain}/right/after", jar=False)
        self.port_80_at_return[label] = (code, status, headers.get("location"))
        print(f"install.sh ({label}): {self.timings[label]:.1f} s")
        if check and result.returncode != 0:
            pytest.fail(f"install.sh ({label}) exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def uninstall(self, *args):
        return run([self.project / "deploy" / "uninstall.sh", *args], self.project, timeout=300, check=False)

    def curl(self, url, *args, host=None, jar=True):
        """(curl exit code, status, headers as lowercase name -> [values], body)."""
        host = host or self.domain
        # Files of this call only: the login burst runs eight curls at once.
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            headers_file = Path(scratch) / "headers.txt"
            body_file = Path(scratch) / "body.txt"
            command = ["curl", "-sS", "--max-time", "15", "--cacert", str(self.cert), "-D", str(headers_file),
                       "-o", str(body_file), "-w", "%{http_code}",
                       "--resolve", f"{host}:443:127.0.0.1", "--resolve", f"{host}:80:127.0.0.1"]  # fmt: skip
            if jar:
                command += ["-b", str(self.jar), "-c", str(self.jar)]
            result = subprocess.run([*command, *args, url], capture_output=True, text=True, timeout=30)
            headers = {}
            if headers_file.exists():
                for line in headers_file.read_text(errors="replace").splitlines()[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers.setdefault(name.strip().lower(), []).append(value.strip())
            body = body_file.read_text(errors="replace") if body_file.exists() else ""
        status = int(result.stdout) if result.stdout.strip().isdigit() else 0
        return result.returncode, status, headers, body

    def get(self, path, *args, **kwargs):
        code, status, headers, body = self.curl(f"https://{self.domain}{path}", *args, **kwargs)
        assert code == 0, f"curl https://{self.domain}{path} failed with exit code {code}"
        return status, headers, body

    def create_admin(self, username="admin", password=ADMIN_PASSWORD):
        """A superuser made the documented way (createsuperuser --noinput), as the app user."""
        self.manage(
            "createsuperuser", "--noinput", "--username", username, "--email", f"{username}@example.com",
            env={"DJANGO_SUPERUSER_PASSWORD": password},
        )  # fmt: skip

    def login(self, password=ADMIN_PASSWORD):
        self.jar.unlink(missing_ok=True)
        status, _, form = self.get("/admin/login/?next=/admin/")
        assert status == 200, form[:500]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
        code, status, headers, body = self.curl(
            f"https://{self.domain}/admin/login/?next=/admin/",
            "-H", f"Referer: https://{self.domain}/admin/login/",
            "--data-urlencode", f"csrfmiddlewaretoken={token}",
            "--data-urlencode", "username=admin",
            "--data-urlencode", f"password={password}",
            "--data-urlencode", "next=/admin/",
        )  # fmt: skip
        assert code == 0 and status == 302, body[:500]
        assert headers["location"] == ["/admin/"]
        return headers

    def as_app_user(self, *command, env=None):
        env_args = [f"{key}={value}" for key, value in (env or {}).items()]
        return run(
            [
                "runuser",
                "-u",
                self.slug,
                "--",
                "env",
                "-i",
                "PATH=/usr/bin:/bin",
                f"HOME={self.app_root}",
                *env_args,
                *command,
            ],
            self.app_root,
        )

    def manage(self, *args, env=None):
        return self.as_app_user(str(self.app_root / ".venv" / "bin" / "python"), "manage.py", *args, env=env)

    def installed(self):
        return self.app_root.exists() or Path(f"/etc/supervisor/conf.d/{self.slug}.conf").exists()


def require_root():
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("the deploy tests run install.sh for real and need root (CI runs as root)")
    pytest.skip("deploy/install.sh needs root: run the suite as root (CI does)")


def system_redis_running():
    try:
        os.kill(int(Path("/run/redis/redis-server.pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def python_outside_root(python, directory):
    """A copy of a pyenv interpreter that the app user can run.

    pyenv lives in /root (mode 0700), and its shared libpython is found
    through an absolute RUNPATH into it: copy the installation (hard links
    where possible, without its test suite) and point the RUNPATH at the copy.
    """
    source = Path(python).resolve().parent.parent
    target = directory / source.name

    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    ignore = shutil.ignore_patterns("test", "tests", "idlelib", "tkinter", "turtledemo", "site-packages")
    shutil.copytree(source, target, symlinks=True, ignore=ignore, copy_function=link_or_copy)
    binary = target / "bin" / Path(python).resolve().name
    binary.unlink()  # a hard link: patch a copy, never pyenv's own file
    shutil.copy2(Path(python).resolve(), binary)
    run([TOOLS / "patchelf", "--set-rpath", str(target / "lib"), binary], directory)
    for path in (directory, *directory.parents):
        if path == Path("/"):
            break
        path.chmod(path.stat().st_mode | 0o055)
    return binary


@pytest.fixture(scope="module", params=sorted(SERVERS), ids=lambda name: f"server={name}")
def server(request, cookies_session, tmp_path_factory):
    """Bake, install with install.sh, and always clean up with uninstall.sh.

    nginx already runs before every install but the first (a second site on
    a server, a reinstall): install.sh must not say done while nginx's old
    workers still answer. The first install starts nginx itself, as on a
    fresh server.
    """
    require_root()
    require("curl")
    choices = dict(SERVERS[request.param])
    slug = choices["project_slug"]
    if Path(f"/webapps/{slug}").exists() or Path(f"/etc/supervisor/conf.d/{slug}.conf").exists():
        pytest.fail(f"/webapps/{slug} or its supervisor program exists already: run its deploy/uninstall.sh first")
    nginx_before, supervisord_before = nginx_running(), supervisord_running()
    redis_before = system_redis_running()
    baked = bake(cookies_session, domain_name=DOMAIN, **choices)
    assert baked.name == slug
    # install.sh runs from a fresh git clone, as on a server: no .env, no
    # .venv, and a .git directory that must never be served.
    project = commit_and_clone(baked)
    python = None
    if choices.get("django_version", "5.2") != "5.2":
        python = python_outside_root(context_for(**choices)["python"], Path(tempfile.mkdtemp(prefix="sst-py-")))
    if nginx_before is None and request.param != sorted(SERVERS)[0]:
        subprocess.run(["nginx"], check=True, capture_output=True)
        assert nginx_running()
    deployed = Server(project, tmp_path_factory.mktemp("deploy"), choices, python)
    try:
        deployed.install("first run")
        yield deployed
    finally:
        if deployed.installed():
            deployed.uninstall()
        # Stop exactly the daemons that the install (or this fixture) started.
        stop_daemons_started_since(nginx_before, supervisord_before)
        if deployed.redis == "system" and not redis_before and system_redis_running():
            subprocess.run(["service", "redis-server", "stop"], capture_output=True)
        if python:
            shutil.rmtree(python.parent.parent.parent, ignore_errors=True)
        for label, seconds in deployed.timings.items():
            print(f"install.sh server={request.param} {label}: {seconds:.1f} s")


def test_install_says_how_it_runs_services(server):
    output = server.outputs["first run"]
    assert "install.sh: services: " in output
    expected = "systemd (systemctl)" if Path("/run/systemd/system").is_dir() else "no systemd"
    assert expected in output
    assert re.search(r"install\.sh: done in \d+ s", output)


def test_port_80_redirects_as_soon_as_install_returns(server):
    """No answer from the old config after "done" (Debian's default site gave 404)."""
    assert server.port_80_at_return["first run"] == (0, 301, [f"https://{DOMAIN}/right/after"])


def test_healthz_over_https(server):
    status, headers, body = server.get("/healthz")
    assert status == 200, body
    assert '"status": "ok"' in body


def test_http_redirects_to_https_except_acme(server):
    code, status, headers, _ = server.curl(f"http://{DOMAIN}/some/path?x=1")
    assert code == 0
    assert status == 301
    assert headers["location"] == [f"https://{DOMAIN}/some/path?x=1"]
    assert headers["server"] == ["nginx"]
    challenge = server.app_root / "var" / "acme" / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / "token123").write_text("proof")
    for path in (challenge.parent, challenge, challenge / "token123"):
        # var/acme/ is nginx's (group <slug>-web), like certbot's files in it.
        shutil.chown(path, "root", f"{server.slug}-web")
        path.chmod(0o750 if path.is_dir() else 0o640)
    code, status, _, body = server.curl(f"http://{DOMAIN}/.well-known/acme-challenge/token123")
    assert (code, status, body) == (0, 200, "proof")


def test_security_headers_on_pages_and_static_files(server):
    manifest = server.app_root / "static" / "staticfiles.json"
    hashed = re.search(r'"admin/css/base\.css": "([^"]+)"', manifest.read_text()).group(1)
    for path in ("/", "/healthz", f"/static/{hashed}", "/static/admin/css/base.css", "/no-such-page"):
        _, headers, _ = server.get(path)
        assert headers.get("strict-transport-security") == ["max-age=31536000; includeSubDomains"], path
        assert headers.get("x-content-type-options") == ["nosniff"], path
        assert headers.get("referrer-policy") == ["same-origin"], path
        assert headers.get("server") == ["nginx"], path  # server_tokens off: no version
    status, headers, _ = server.get(f"/static/{hashed}")
    assert status == 200 and headers["cache-control"] == ["public, max-age=31536000, immutable"]


def test_static_files_go_out_precompressed(server):
    """install.sh installed Debian's brotli module, collectstatic wrote the
    copies, and the system nginx sends them (byte for byte: test_stack.py)."""
    manifest = server.app_root / "static" / "staticfiles.json"
    hashed = re.search(r'"admin/css/base\.css": "([^"]+)"', manifest.read_text()).group(1)
    for accept, encoding in (("br", "br"), ("gzip", "gzip"), ("gzip, deflate, br", "br")):
        status, headers, _ = server.get(f"/static/{hashed}", "-H", f"Accept-Encoding: {accept}")
        assert status == 200 and headers.get("content-encoding") == [encoding], (accept, headers)
        assert headers["vary"] == ["Accept-Encoding"] and "strict-transport-security" in headers
    _, headers, body = server.get("/admin/login/", "-H", "Accept-Encoding: gzip", jar=False)
    assert headers.get("content-encoding") == ["gzip"], headers


def test_anonymous_pages_come_from_nginx_cache(server):
    """The microcache works on the server too; a session cookie always reaches Django."""
    if not server.page_cache:
        headers = [server.get("/", jar=False)[1] for _ in range(2)]
        assert [h.get("x-cache-status") for h in headers] == [None, None]
        assert not list(Path("/etc/nginx/snippets").glob(f"{server.slug}-page-cache*"))
        return
    statuses = [server.get("/", jar=False)[1].get("x-cache-status") for _ in range(3)]
    assert statuses[-1] == ["HIT"], statuses
    _, headers, _ = server.get("/", "-H", "Cookie: sessionid=abc", jar=False)
    assert headers.get("x-cache-status") == ["BYPASS"]


def test_unknown_hosts_are_dropped(server):
    # Plain HTTP: 444 closes the connection without an answer (curl: 52).
    code, status, _, _ = server.curl("http://unknown.test/", host="unknown.test")
    assert code == 52 and status == 0
    # TLS with an unknown name: the handshake is refused (curl: 35).
    code, status, _, _ = server.curl("https://unknown.test/", "-k", host="unknown.test")
    assert code == 35 and status == 0
    # The right name in TLS but another Host header: no answer either.
    code, status, _, _ = server.curl(f"https://{DOMAIN}/", "-H", "Host: unknown.test", "--http1.1")
    assert code == 52 and status == 0


def test_dotfiles_and_git_are_not_served(server):
    for path in ("/.git/config", "/.env", "/static/../.git/config", "/.socketstack-app"):
        status, _, body = server.get(path, "--path-as-is")
        assert status == 404, (path, body[:200])
        assert "repositoryformatversion" not in body and "SECRET_KEY" not in body


def test_admin_login_over_https_with_secure_cookie(server):
    server.create_admin()
    headers = server.login()
    session_cookie = next(c for c in headers["set-cookie"] if c.startswith("sessionid="))
    flags = [part.strip().lower() for part in session_cookie.split(";")]
    assert "secure" in flags and "httponly" in flags, session_cookie
    status, _, body = server.get("/admin/")
    assert status == 200 and "Log out" in body


def test_check_deploy_passes_as_app_user(server):
    result = server.manage("check", "--deploy", "--fail-level", "WARNING")
    assert "no issues" in result.stdout


def test_env_file_and_layout_permissions(server):
    env_file = server.app_root / ".env"
    st = env_file.stat()
    assert st.st_mode & 0o777 in (0o600, 0o640)
    values = project_module(server.project, f"{server.slug}/env.py").read_env_file(env_file)
    assert len(values["DJANGO_SECRET_KEY"]) >= 50
    assert values["DJANGO_DEBUG"] == "false" and values["SITE_HTTPS"] == "true"
    assert values["DJANGO_ALLOWED_HOSTS"] == DOMAIN
    # Others may traverse the app root (nginx's way to static/ and run/), not list it.
    assert server.app_root.stat().st_mode & 0o007 == 0o001
    app = pwd.getpwnam(server.slug)
    # The app user writes its runtime directories, not its code.
    assert (server.app_root / "run").stat().st_uid == app.pw_uid
    for path in (
        server.app_root / "manage.py",
        server.app_root / server.slug / "settings.py",
        server.app_root / ".venv" / "bin",
    ):
        assert path.stat().st_uid == 0 and path.stat().st_mode & 0o022 == 0, path
    supervisor_conf = Path(f"/etc/supervisor/conf.d/{server.slug}.conf").read_text()
    assert values["DJANGO_SECRET_KEY"] not in supervisor_conf
    assert supervisor_conf.count(f"user={server.slug}") == (3 if server.redis == "dedicated" else 1)


def connect_as(user, path):
    code = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
    return subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", code, str(path)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_sockets_closed_to_others(server):
    sockets = [path for path in (server.app_root / "run").iterdir() if path.is_socket()]
    names = {path.name for path in sockets}
    if server.redis == "dedicated":
        assert {"gunicorn.sock", "redis-cache.sock", "redis-sessions.sock"} <= names
    else:
        assert "gunicorn.sock" in names
        sockets.append(Path("/run/redis/redis-server.sock"))
        assert Path("/run/redis/redis-server.sock").stat().st_mode & 0o777 == 0o770
        assert "redis" in subprocess.run(["id", "-nG", server.slug], capture_output=True, text=True).stdout.split()
    for path in sockets:
        assert path.stat().st_mode & 0o007 == 0, f"{path.name}: {oct(path.stat().st_mode & 0o777)}"
    # 770 and a group (never 777): the one group nginx's user joins.
    gunicorn_sock = (server.app_root / "run" / "gunicorn.sock").stat()
    assert gunicorn_sock.st_mode & 0o777 == 0o770
    assert grp.getgrgid(gunicorn_sock.st_gid).gr_name == f"{server.slug}-web"
    assert (server.app_root / "run").stat().st_mode & 0o007 == 0
    # nginx's user reaches gunicorn through group <slug>-web; nobody else does.
    assert connect_as("www-data", server.app_root / "run" / "gunicorn.sock").returncode == 0
    denied = connect_as("nobody", server.app_root / "run" / "gunicorn.sock")
    assert denied.returncode != 0 and "PermissionError" in denied.stderr


def sessions_redis_pid(server):
    if server.redis == "system":
        return Path("/run/redis/redis-server.pid").read_text().strip()
    pattern = f"{server.app_root}/run/redis-sessions.sock"
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.strip()


def test_failed_nginx_check_puts_every_file_back(server):
    """A site that nginx -t refuses: install.sh fails and leaves the nginx files,
    page cache snippets included, as they were, with no .bak behind."""
    if server.redis != "dedicated" or not server.page_cache:
        pytest.skip("once is enough: on the server with dedicated Redis and the page cache snippets")
    ours = sorted(
        [
            *Path("/etc/nginx/snippets").glob(f"{server.slug}*"),
            *Path("/etc/nginx/sites-available").glob(f"{server.slug}*"),
        ]
    )
    before = {path: path.read_text() for path in ours}
    snippet = server.project / "deploy" / "nginx" / "page-cache.conf"
    good = snippet.read_text()
    snippet.write_text(good + "\nnot_a_directive on;\n")
    try:
        result = server.install("refused config", check=False)
    finally:
        snippet.write_text(good)
    assert result.returncode != 0
    assert 'FAILED in step "nginx:' in server.outputs["refused config"], server.outputs["refused config"]
    assert "not_a_directive" in server.outputs["refused config"]
    after = sorted(
        [
            *Path("/etc/nginx/snippets").glob(f"{server.slug}*"),
            *Path("/etc/nginx/sites-available").glob(f"{server.slug}*"),
        ]
    )
    assert after == ours
    assert {path: path.read_text() for path in after} == before
    assert subprocess.run(["nginx", "-t"], capture_output=True).returncode == 0
    status, _, body = server.get("/healthz")
    assert status == 200, body


def test_tls12_uses_only_the_sites_ciphers(server):
    """TLS 1.2 offers only the site's ECDHE/AEAD list: RSA key exchange and CBC are
    refused. (gixy flags the catch-all for having no ssl_ciphers; this shows that
    the default server's missing list does not reach the site's handshakes.)"""
    openssl = require("openssl")

    def handshake(cipher):
        command = [
            openssl,
            "s_client",
            "-connect",
            "127.0.0.1:443",
            "-servername",
            DOMAIN,
            "-tls1_2",
            "-cipher",
            cipher,
        ]
        return subprocess.run(command, input="", capture_output=True, text=True, timeout=30).returncode

    assert handshake("ECDHE-RSA-AES128-GCM-SHA256") == 0
    assert handshake("AES256-SHA") != 0
    assert handshake("ECDHE-RSA-AES256-SHA") != 0


def test_second_install_keeps_sessions(server):
    before = sessions_redis_pid(server)
    assert before
    server.login()
    server.install("second run")
    assert "exists: kept as it is" in server.outputs["second run"]
    assert "gunicorn reloaded gracefully" in server.outputs["second run"]
    status, _, body = server.get("/admin/")
    assert status == 200 and "Log out" in body, "the second install logged the user out"
    assert sessions_redis_pid(server) == before  # the sessions Redis was not restarted
    assert server.port_80_at_return["second run"] == (0, 301, [f"https://{DOMAIN}/right/after"])


def test_successful_installs_print_no_failed_or_error_line(server):
    """The first install (no state under /var/lib/socketstack yet) and the
    second say how they went and nothing else: no FAILED or ERROR line."""
    for label in ("first run", "second run"):
        output = server.outputs[label]
        assert "install.sh: done in" in output, label
        bad = [line for line in output.splitlines() if re.search(r"\bFAILED\b|\bERROR\b", line)]
        assert bad == [], f"{label}: {bad}"


def load_of_gets(server, stop, results):
    """GETs of / and /healthz one after another until stop is set: (status, seconds) each."""
    while not stop.is_set():
        for path in ("/", "/healthz"):
            started = time.monotonic()
            code, status, _, _ = server.curl(f"https://{server.domain}{path}", jar=False)
            results.append((status if code == 0 else f"curl exit {code}", time.monotonic() - started))


def test_new_python_gets_a_new_venv_and_no_request_fails(server, tmp_path):
    """A new interpreter (as after a Debian upgrade): install.sh builds a new venv
    beside the one in use, a stand-in gunicorn answers while gunicorn restarts on
    it, and under a load of GETs no request fails; the admin stays logged in."""
    if server.python or server.redis != "dedicated":
        pytest.skip("one server moves to another Python: the dedicated one, on Debian's python3")
    old_venv = (server.app_root / ".venv").resolve()
    assert (server.app_root / ".venv").is_symlink() and old_venv.name.startswith(".venv-")
    # Built with the versioned name (python -> python3.11 -> /usr/bin/python3.11), not python3,
    # which a Debian upgrade points at another Python.
    assert re.fullmatch(r"python3\.\d+", os.readlink(old_venv / "bin" / "python")), os.readlink(
        old_venv / "bin" / "python"
    )
    in_use = server.as_app_user(".venv/bin/python", "-c", "import sys; print(sys.version_info[1])").stdout.strip()
    candidates = [*Path.home().glob(".pyenv/versions/3.1[0-9].*/bin/python3"), *Path("/usr/bin").glob("python3.1?")]
    minor = "import sys; print(sys.version_info[1])"
    other = next(
        (c for c in sorted(candidates, reverse=True) if run([c, "-c", minor], tmp_path).stdout.strip() != in_use), None
    )
    if other is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no Python >= 3.10 besides 3.{in_use} to move to")
    server.python = python_outside_root(other, tmp_path) if str(other).startswith("/root") else other
    server.login()
    stop, results = threading.Event(), []
    loader = threading.Thread(target=load_of_gets, args=(server, stop, results))
    loader.start()
    try:
        time.sleep(1)
        server.install("new python")
        time.sleep(1)
    finally:
        stop.set()
        loader.join()
        server.python = None
    output = server.outputs["new python"]
    new_venv = (server.app_root / ".venv").resolve()
    assert new_venv != old_venv and not old_venv.exists(), output
    assert "stand-in gunicorn" in output and "gunicorn restarted on" in output, output
    failed = [result for result in results if result[0] != 200]
    slowest = max(seconds for _, seconds in results)
    print(f"new python: {len(results)} GETs during the switch, {len(failed)} failed, slowest {slowest:.2f} s")
    assert len(results) > 20 and failed == [], failed[:5]
    status, _, body = server.get("/admin/")
    assert status == 200 and "Log out" in body, "the switch logged the user out"
    now = server.as_app_user(".venv/bin/python", "-c", "import sys; print(sys.version_info[1])").stdout.strip()
    assert now != in_use, f"still on 3.{in_use}"


def test_uninstall_leaves_no_process_and_no_site(server):
    uid = pwd.getpwnam(server.slug).pw_uid
    # What an install.sh interrupted between backup and cleanup leaves behind.
    Path(f"/etc/nginx/snippets/{server.slug}-page-cache.conf.bak").write_text("# stale\n")
    result = server.uninstall()
    assert result.returncode == 0, result.stdout + result.stderr
    assert project_processes(server.app_root) == []
    owned = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _uid_of(p) == uid]
    assert owned == []
    assert not server.app_root.exists()
    assert not Path(f"/etc/supervisor/conf.d/{server.slug}.conf").exists()
    assert not Path("/var/lib/socketstack").exists()
    enabled = list(Path("/etc/nginx/sites-enabled").iterdir())
    assert all(server.slug not in path.name and "socketstack" not in path.name for path in enabled), enabled
    leftovers = [
        *Path("/etc/nginx/snippets").glob(f"{server.slug}-*"),
        *Path("/etc/nginx/sites-available").glob(f"{server.slug}.*"),
    ]
    assert leftovers == []
    dump = subprocess.run(["nginx", "-T"], capture_output=True, text=True)
    assert DOMAIN not in dump.stdout
    # Nothing answers for the domain any more (refused, or the catch-all's 444).
    code, status, _, _ = server.curl(f"https://{DOMAIN}/healthz", "-k", jar=False)
    assert code != 0 and status == 0
    with pytest.raises(KeyError):
        pwd.getpwnam(server.slug)


def _uid_of(proc_dir):
    try:
        for line in (proc_dir / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.parametrize(
    "env, first_line",
    [
        ({"DOMAIN": "https://example.com"}, "install.sh: ERROR: DOMAIN='https://example.com' is not a hostname"),
        ({"DOMAIN": "Example.COM"}, "install.sh: ERROR: DOMAIN='Example.COM' is not a hostname"),
        ({"APP_ROOT": "webapps/x"}, "install.sh: ERROR: APP_ROOT='webapps/x' must be an absolute path"),
        ({"APP_ROOT": "/etc"}, "install.sh: ERROR: APP_ROOT='/etc' is a system directory"),
        ({"APP_ROOT": "/srv/" + "x" * 90}, "install.sh: ERROR: APP_ROOT='/srv/xxx"),
        ({"LETSENCRYPT_EMAIL": "you"}, "install.sh: ERROR: LETSENCRYPT_EMAIL='you' is not an email address"),
        (
            {"LETSENCRYPT_EMAIL": "you@example.com", "ACME_SERVER": "http://ca.test/dir"},
            "install.sh: ERROR: ACME_SERVER='http://ca.test/dir' is not an https URL",
        ),
        (
            {"LETSENCRYPT_EMAIL": "you@example.com", "ACME_CA_BUNDLE": "/no/such/ca.pem"},
            "install.sh: ERROR: ACME_CA_BUNDLE='/no/such/ca.pem' is not a readable file",
        ),
    ],
    ids=["scheme", "uppercase", "relative-root", "system-root", "long-root", "acme-email", "acme-server", "acme-ca"],
)
def test_bad_input_fails_first_with_the_fix(cookies_session, env, first_line):
    """Bad settings stop install.sh before it changes anything (and before the
    root check), with one clear line."""
    project = bake(cookies_session, domain_name=DOMAIN)
    result = run([project / "deploy" / "install.sh"], project, env=env, check=False)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert lines[0].startswith(first_line), lines[:3]
    assert len(lines) == 1


def test_other_systems_and_a_bad_wheelhouse_are_refused_before_anything_changes(cookies_session, tmp_path):
    """Another release (or Ubuntu), a missing wheelhouse and one without a
    locked file: one line naming it, and no user, app root or site file made."""
    require_root()
    slug = "sst_refused"
    project = commit_and_clone(bake(cookies_session, project_slug=slug, domain_name=DOMAIN))
    ubuntu = tmp_path / "os-release"
    ubuntu.write_text('ID=ubuntu\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n')
    empty = tmp_path / "wheels"
    empty.mkdir()
    (empty / "django-5.2-py3-none-any.whl").write_bytes(b"not the locked file")
    before = sorted(path.name for path in Path("/etc/nginx/sites-available").iterdir())
    cases = [
        ({"SOCKETSTACK_OS_RELEASE": str(ubuntu)},
         "install.sh: ERROR: this system is Ubuntu 24.04.1 LTS: install.sh supports Debian 12 (bookworm) and "
         "Debian 13 (trixie) only"),
        ({"WHEELHOUSE": f"{tmp_path}/nowhere"}, f"install.sh: ERROR: WHEELHOUSE={tmp_path}/nowhere: no such directory"),
        ({"WHEELHOUSE": str(empty)}, f"install.sh: ERROR: WHEELHOUSE={empty}: lacks "),
    ]  # fmt: skip
    for env, first_line in cases:
        result = run([project / "deploy" / "install.sh"], project, env={**os.environ, **env}, check=False)
        lines = (result.stdout + result.stderr).splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith(first_line), lines
    assert "(requirements.lock) for Python" in lines[0] and "make wheelhouse" in lines[0]
    assert not Path(f"/webapps/{slug}").exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(slug)
    assert sorted(path.name for path in Path("/etc/nginx/sites-available").iterdir()) == before


def test_unknown_argument_is_refused(cookies_session):
    project = bake(cookies_session, domain_name=DOMAIN)
    result = run([project / "deploy" / "install.sh", "--frobnicate"], project, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("install.sh: ERROR: unknown argument '--frobnicate'")


def test_stale_lock_stops_before_touching_the_server(cookies_session):
    """pyproject.toml changed after the lock: install.sh names the lock and changes nothing."""
    require_root()
    slug = "sst_stale_lock"
    project = commit_and_clone(bake(cookies_session, project_slug=slug, domain_name=DOMAIN))
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"gunicorn>=25.1",', '"gunicorn>=25.1",\n    "requests>=2",'))
    before = sorted(path.name for path in Path("/etc/nginx/sites-available").iterdir())
    result = run([project / "deploy" / "install.sh"], project, check=False)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert lines[0].startswith(
        f"install.sh: ERROR: {project}/requirements.lock: does not match the dependencies in pyproject.toml"
    ), lines
    assert "make lock" in lines[0] and len(lines) == 1
    assert not Path(f"/webapps/{slug}").exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(slug)
    assert sorted(path.name for path in Path("/etc/nginx/sites-available").iterdir()) == before
