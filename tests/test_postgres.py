"""database=postgresql: the local stack's own PostgreSQL (the newest major version
installed) under supervisord, on a unix socket in run/postgres/, and what
happens when it stops.

Real processes only: the baked project's `make up` (redis-server x2,
gunicorn, nginx, postgres under supervisord), psql over the same socket and
throwaway clusters (tests/postgres.py). Run with -s for the figures.
"""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import (
    TEMPLATE,
    Stack,
    bake,
    free_port,
    load_hook,
    project_module,
    require,
    run,
    short_output_dir,
    stop_stack,
)
from postgres import LOCAL_STACK, Cluster, open_to_others, postgres_pids, psql, start_pg_stack, uid_of, wait_for

pytestmark = pytest.mark.stack

PASSWORD = "postgres-test-" + "pw-4k9z" * 3


def report(message):
    print(f"\n[postgres] {message}", flush=True)


@pytest.fixture(scope="module", params=["cache", "cached_db"])
def pg_stack(request, cookies_session):
    started = time.monotonic()
    stack = start_pg_stack(cookies_session, session_engine=request.param)
    report(f"{request.param}: bake + first make up (initdb) {time.monotonic() - started:.1f} s")
    stack.engine = request.param
    stack.create_admin(PASSWORD)
    yield stack
    stop_stack(stack)
    assert postgres_pids(stack.project) == []
    assert list((stack.project / "run" / "postgres").iterdir()) == []


def login(stack):
    session, token = stack.login_form()
    response = stack.post_login(session, token, "admin", PASSWORD)
    assert response.status_code == 302 and response.headers["location"] == "/admin/", response.text[:500]
    return session


def get(stack, session, path):
    return session.get(stack.base_url + path, allow_redirects=False, timeout=10)


def program(stack):
    return f"{stack.slug}-postgres"


# The stack ---------------------------------------------------------------------


def test_login_lives_in_postgres_and_survives_down_and_up(pg_stack):
    stack = pg_stack
    assert requests.get(f"{stack.base_url}/healthz", timeout=10).json()["checks"]["database"] == "ok"
    session = login(stack)
    key = session.cookies["sessionid"]
    rows = psql(stack, f"SELECT count(*) FROM django_session WHERE session_key = '{key}'")
    # cached_db keeps every session in the database; cache only in Redis.
    assert rows == ("1" if stack.engine == "cached_db" else "0")
    assert psql(stack, "SHOW listen_addresses") == ""
    assert psql(stack, "SELECT current_user") == stack.slug
    socket_dir = stack.project / "run" / "postgres"
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        # trust, but on a socket only the cluster's account (and root) can reach.
        other = run(["setpriv", "--reuid=daemon", "--regid=daemon", "--clear-groups", stack.bin / "psql", "-X",
                     "-h", socket_dir, "-U", stack.slug, "-d", stack.slug, "-c", "SELECT 1"], stack.project,
                    check=False)  # fmt: skip
        assert other.returncode != 0 and "Permission denied" in other.stderr, other.stderr
    pids = postgres_pids(stack.project / "var" / "postgres")
    assert pids
    # Run as root, the cluster belongs to an unprivileged account (nobody: root owns the project).
    assert {uid_of(pid) for pid in pids} == ({65534} if os.geteuid() == 0 else {os.geteuid()})

    started = time.monotonic()
    stack.make("down")
    down = time.monotonic() - started
    assert postgres_pids(stack.project) == []
    assert list(socket_dir.glob(".s.PGSQL*")) == []
    log = stack.log("postgres.log")
    assert "received fast shutdown request" in log and "database system is shut down" in log
    started = time.monotonic()
    stack.make("up")
    report(f"{stack.engine}: make down {down:.1f} s, make up again {time.monotonic() - started:.1f} s")
    assert get(stack, session, "/admin/").status_code == 200  # still logged in
    # A clean shutdown: no crash recovery at the start after it.
    assert "database system was not properly shut down" not in stack.log("postgres.log")


def test_postgres_stopped_is_503_naming_database_then_back(pg_stack):
    stack = pg_stack
    session = login(stack)
    assert get(stack, session, "/").status_code == 200  # fills the page cache
    supervisor = stack.supervisor()
    others = {p["name"]: p["pid"] for p in supervisor.getAllProcessInfo() if p["name"] != program(stack)}
    supervisor.stopProcess(program(stack))
    try:
        assert postgres_pids(stack.project / "var" / "postgres") == []
        health = requests.get(f"{stack.base_url}/healthz", timeout=10)
        assert health.status_code == 503 and health.json()["failed"] == ["database"], health.text
        assert requests.get(f"{stack.base_url}/", timeout=10).status_code == 200  # cached page
        started = time.monotonic()
        admin = get(stack, session, "/admin/")
        took = time.monotonic() - started
        report(f"{stack.engine}: /admin/ with PostgreSQL down: {admin.status_code} in {took:.3f} s")
        assert admin.status_code == 503 and "Back in a moment" in admin.text
        assert admin.headers["Retry-After"]
        # The session itself: cached_db reads it from the sessions Redis; the
        # user behind it (auth_user) is in the database, hence the 503 above.
        key = session.cookies["sessionid"]
        engine = f"{stack.slug}.sessions.{stack.engine}"
        probe = stack.manage(
            "shell", "-c",
            f"from importlib import import_module; s = import_module('{engine}').SessionStore('{key}'); "
            "print('user', s.load().get('_auth_user_id'))",
        )  # fmt: skip
        report(f"{stack.engine}: session read with PostgreSQL down: {probe.stdout.strip().splitlines()[-1]}")
        assert re.search(r"^user \d+$", probe.stdout, re.M), probe.stdout + probe.stderr
    finally:
        supervisor.startProcess(program(stack))
    wait_for(lambda: requests.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200, what="/healthz 200")
    assert get(stack, session, "/admin/").status_code == 200
    assert {p["name"]: p["pid"] for p in supervisor.getAllProcessInfo() if p["name"] != program(stack)} == others
    assert "Traceback" not in stack.log("gunicorn.log")


def add_group(stack, session, name):
    form = get(stack, session, "/admin/auth/group/add/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    return session.post(
        f"{stack.base_url}/admin/auth/group/add/",
        data={"csrfmiddlewaretoken": token, "name": name, "_save": "Save"},
        headers={"Referer": f"{stack.base_url}/admin/auth/group/add/"},
        allow_redirects=False,
        timeout=30,
    )


def gunicorn_workers(stack):
    master = stack.supervisor().getProcessInfo(f"{stack.slug}:{stack.slug}-gunicorn")["pid"]
    return [int(p) for p in run(["pgrep", "-P", str(master)], stack.project).stdout.split()]


def test_worker_killed_mid_transaction_loses_no_committed_row(pg_stack):
    """A POST blocks inside its transaction (psql holds a lock on auth_group); every
    gunicorn worker is then killed with SIGKILL. The rows committed before are all
    there, the half-done one is not, and the site serves again."""
    stack = pg_stack
    if stack.engine != "cached_db":
        pytest.skip("once is enough: the session engine plays no part")
    session = login(stack)
    committed = [f"committed-{i}" for i in range(5)]
    for name in committed:
        assert add_group(stack, session, name).status_code == 302
    locker = subprocess.Popen(
        [stack.bin / "psql", "-X", "-q", "-At", "-h", stack.project / "run" / "postgres", "-U", stack.slug,
         "-d", stack.slug],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        locker.stdin.write("BEGIN; LOCK TABLE auth_group IN SHARE MODE; SELECT 'locked';\n")
        locker.stdin.flush()
        assert locker.stdout.readline().strip() == "locked"
        results = []
        thread = threading.Thread(target=lambda: results.append(add_group(stack, session, "in-flight")), daemon=True)
        thread.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        wait_for(lambda: psql(stack, waiting) == "1", what="the POST to wait on the lock inside its transaction")
        workers = gunicorn_workers(stack)
        for pid in workers:
            os.kill(pid, 9)
        locker.stdin.write("COMMIT;\n")
        locker.stdin.close()
        locker.wait(timeout=10)
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
    thread.join(timeout=30)
    report(f"killed {len(workers)} workers; the in-flight POST got {results[0].status_code if results else None}")
    wait_for(lambda: psql(stack, waiting) == "0", what="the killed worker's backend to end")
    names = psql(stack, "SELECT name FROM auth_group ORDER BY name").split("\n")
    assert names == committed
    wait_for(lambda: requests.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200, what="/healthz 200")
    assert add_group(stack, session, "after").status_code == 302


def test_make_backup_restores_into_a_fresh_cluster(pg_stack):
    stack = pg_stack
    if stack.engine != "cache":
        pytest.skip("once is enough: the session engine plays no part")
    output = stack.make("backup").stdout
    dump = next(line for line in output.splitlines() if line.endswith(".dump"))
    assert dump.startswith(str(stack.project / "var" / "backups"))
    assert open(dump, "rb").read(5) == b"PGDMP"  # pg_dump's custom format
    cluster = Cluster().start()
    try:
        cluster.psql("CREATE DATABASE restored")
        restore = [cluster.bin / "pg_restore", "--no-owner", "-h", cluster.socket_dir, "-U", cluster.user]
        run([*restore, "-d", "restored", dump], cluster.dir)
        assert cluster.psql("SELECT username FROM auth_user WHERE is_superuser", "restored") == "admin"
    finally:
        cluster.stop()


def test_project_make_test_and_check(pg_stack):
    """The project's own tests start their own cluster; the checks pass on the postgresql bake."""
    stack = pg_stack
    if stack.engine != "cache":
        pytest.skip("once is enough")
    result = stack.make("test", env={"DATABASE_URL": ""}, timeout=300)
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
    stack.make("check", timeout=300)
    assert not [path for path in Path("/tmp").glob("pgtest-*") if path.stat().st_mtime > time.time() - 300]


def test_make_up_names_the_directory_postgres_cannot_enter(cookies):
    if os.geteuid() != 0:
        pytest.skip("only root hands PostgreSQL to another account")
    baked = bake(cookies, local_port=str(free_port()), database="postgresql")
    project = short_output_dir("blocked") / baked.name  # 0700, as mkdtemp makes it: nobody cannot pass
    shutil.copytree(baked, project)
    # It stops before anything needs the project's .venv: the tooling's Python will do.
    result = run([sys.executable, "deploy/local_stack.py", "up"], project, check=False)
    assert result.returncode != 0
    first = next(line for line in result.stderr.splitlines() if line.startswith("make up:"))
    assert "PostgreSQL runs as nobody" in first and f"cannot enter {project.parent}: `chmod o+x" in first, first
    assert Stack(project).processes() == []
    assert not (project / "var" / "postgres").exists()


# Which PostgreSQL: whatever major version is installed -----------------------------


def fake_postgresql(root, programs):
    """A stand-in for /usr/lib/postgresql: {"17": ["postgres", "psql"]} makes 17/bin/postgres and 17/bin/psql."""
    for version, names in programs.items():
        (root / version / "bin").mkdir(parents=True)
        for name in names:
            (root / version / "bin" / name).touch(mode=0o755)
    return root


def test_postgres_bindir_takes_the_newest_server_installed(tmp_path, monkeypatch):
    """17 installed and 15 not (Debian 13), 9.6 sorted as a version, a client-only 18 skipped."""
    monkeypatch.delenv("PG_BINDIR", raising=False)
    find = LOCAL_STACK.postgres_bindir
    root = fake_postgresql(tmp_path / "a", {"17": ["postgres", "pg_dump"]})
    assert find(root=root) == root / "17" / "bin"
    root = fake_postgresql(tmp_path / "b", {"9.6": ["postgres"], "16": ["postgres"], "18": ["psql", "pg_dump"]})
    assert find(root=root) == root / "16" / "bin"
    assert find("pg_dump", root=root) == root / "18" / "bin"  # make backup needs only the client


def test_postgres_bindir_keeps_the_version_that_made_the_cluster(tmp_path, monkeypatch):
    """After an upgrade from Debian 12, var/postgres is still a 15 cluster: 17's postgres cannot open it."""
    monkeypatch.delenv("PG_BINDIR", raising=False)
    find = LOCAL_STACK.postgres_bindir
    data = tmp_path / "var" / "postgres"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    both = fake_postgresql(tmp_path / "both", {"15": ["postgres"], "17": ["postgres"]})
    assert find(data=data, root=both) == both / "15" / "bin"
    only_17 = fake_postgresql(tmp_path / "new", {"17": ["postgres"]})
    with pytest.raises(LOCAL_STACK.StackError) as refused:
        find(data=data, root=only_17)
    message = str(refused.value)
    assert "\n" not in message and "PostgreSQL 15 cluster" in message and "(installed: 17)" in message, message
    assert "sudo apt-get install postgresql-15" in message and f"move {data} away" in message, message


def test_postgres_bindir_says_what_to_install_or_takes_pg_bindir(tmp_path, monkeypatch):
    monkeypatch.delenv("PG_BINDIR", raising=False)
    find = LOCAL_STACK.postgres_bindir
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(LOCAL_STACK.StackError) as refused:
        find(root=empty)
    assert str(refused.value) == (
        f"PostgreSQL is not installed (no {empty}/*/bin/postgres): sudo apt-get install postgresql, "
        "or set PG_BINDIR to the directory of its programs."
    )
    elsewhere = fake_postgresql(tmp_path / "opt", {"16": ["postgres"]}) / "16" / "bin"
    monkeypatch.setenv("PG_BINDIR", str(elsewhere))
    assert find(root=empty) == elsewhere
    monkeypatch.setenv("PG_BINDIR", str(tmp_path))
    with pytest.raises(LOCAL_STACK.StackError, match=f"^PG_BINDIR={tmp_path} has no postgres: unset it"):
        find(root=empty)


def test_stack_cluster_is_the_newest_postgresql_installed(pg_stack):
    """`make up`'s initdb used the version postgres_bindir finds, whatever it is here (15, 16, 17)."""
    assert (pg_stack.project / "var" / "postgres" / "PG_VERSION").read_text().strip() == pg_stack.bin.parent.name


# As a normal user, and a remote database ---------------------------------------------


def test_make_up_as_a_normal_user(cookies):
    """Developers are not root: the whole stack, postgres included, as `nobody`
    (who owns the project here), with no privilege change at all."""
    if os.geteuid() != 0:
        pytest.skip("this run is already not root: every other test here covers it")
    # Debian's interpreter: a .venv on root's pyenv would be out of nobody's reach.
    python = "/usr/bin/python3"
    project = bake(cookies, venv=True, local_port=str(free_port()), database="postgresql", python=python)
    open_to_others(project)
    run(["chown", "-R", "nobody:nogroup", project], project.parent)
    stack = Stack(project)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "HOME=/tmp"]
    try:
        run([*as_nobody, "make", "up"], project)
        pids = postgres_pids(project / "var" / "postgres")
        assert pids and {uid_of(pid) for pid in pids} == {65534}
        assert requests.get(f"{stack.base_url}/healthz", timeout=10).json()["checks"]["database"] == "ok"
        run([*as_nobody, "make", "backup"], project)
    finally:
        run([*as_nobody, "make", "down"], project, check=False)
    assert stack.processes() == [] and postgres_pids(project) == []


def test_local_postgres_only_when_django_uses_it(cookies, monkeypatch):
    project = bake(cookies, database="postgresql")
    local_stack = project_module(project, "deploy/local_stack.py")
    run_dir = project / "run" / "postgres"
    for url, wanted in [
        ("", True),
        (f"postgres://my_site@/my_site?host={run_dir}", True),
        ("postgres:///my_site?host=/var/run/postgresql", False),
        ("postgres://app:pw@db.example.com:5432/app?sslmode=verify-full", False),
    ]:
        monkeypatch.setenv("DATABASE_URL", url)
        assert local_stack.local_postgres_wanted() is wanted, url


def test_database_url_forms(cookies):
    project = bake(cookies)
    env = project_module(project, f"{project.name}/env.py")
    socket = env.database_from_url("postgres:///my_site?host=/var/run/postgresql", project)
    assert (socket["NAME"], socket["HOST"], socket["USER"], socket["PASSWORD"], socket["OPTIONS"]) == (
        "my_site", "/var/run/postgresql", "", "", {}
    )  # fmt: skip
    tls = env.database_from_url(
        "postgres://app:p%40ss@127.0.0.2:5433/app?sslmode=verify-full&sslrootcert=/etc/ca.pem", project
    )
    assert (tls["HOST"], tls["PORT"], tls["PASSWORD"]) == ("127.0.0.2", "5433", "p@ss")
    assert tls["OPTIONS"] == {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}


def test_database_mysql_is_refused(tmp_path):
    pre = load_hook("pre_gen_project")
    with pytest.raises(pre.InvalidAnswer, match=r"^database: 'mysql' is not valid: use sqlite or postgresql"):
        pre.check_database("mysql")
    assert pre.check_database("postgresql") == "postgresql"
    # The slug names the PostgreSQL role, and PostgreSQL reserves pg_*.
    with pytest.raises(pre.InvalidAnswer, match=r"^project_slug: 'pg_site' is not valid: PostgreSQL reserves role"):
        pre.check_database("postgresql", "pg_site")
    assert pre.check_database("sqlite", "pg_site") == "sqlite"
    # On the command line cookiecutter refuses it first, before the hook runs.
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"replay_dir: {tmp_path / 'replay'}\ncookiecutters_dir: {tmp_path / 'cc'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "--config-file", config, "-o", out, TEMPLATE,
         "database=mysql"],
        capture_output=True, text=True, env={**os.environ, "SOCKETSTACK_SKIP_VENV": "1"}, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "mysql provided for choice variable database" in result.stderr.splitlines()[-1]
    assert list(out.iterdir()) == []


# A managed-style PostgreSQL: TCP with TLS and a password, verified against a CA --------------


def make_certificates(directory):
    """A throwaway CA, a server certificate for 127.0.0.2 signed by it, and an unrelated CA."""
    openssl = require("openssl")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.2\n")
    commands = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=sst throwaway CA",
         "-keyout", "ca.key", "-out", "ca.pem"],
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=sst other CA",
         "-keyout", "other.key", "-out", "other-ca.pem"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.2", "-keyout", "server.key", "-out",
         "server.csr"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
         "-extfile", "san.ext", "-out", "server.crt"],
    ]  # fmt: skip
    for command in commands:
        run([openssl, *command], directory)
    for name in ("ca.pem", "other-ca.pem"):
        (directory / name).chmod(0o644)
    return directory / "ca.pem", directory / "other-ca.pem"


def test_database_url_over_tcp_with_tls(cookies, tmp_path):
    """DATABASE_URL=postgres://app:pw@127.0.0.2:port/app?sslmode=verify-full&sslrootcert=...:
    migrate, log in and /healthz through it (the local PostgreSQL stays off); with
    the wrong CA, Django's first connection fails and says why."""
    ca, other_ca = make_certificates(tmp_path)
    cluster = Cluster(tcp_port=free_port(), listen="127.0.0.2")
    try:
        for name in ("server.crt", "server.key"):
            shutil.copy(tmp_path / name, cluster.data / name)
            cluster.own(cluster.data / name, 0o600)
        with open(cluster.data / "pg_hba.conf", "a") as hba:
            # TLS only, with a password: 127.0.0.2 matches no other line.
            hba.write("hostssl app app 127.0.0.2/32 scram-sha-256\n")
        cluster.start("ssl=on", "ssl_cert_file=server.crt", "ssl_key_file=server.key")
        cluster.psql("CREATE ROLE app LOGIN PASSWORD 'tls-test-pw'")
        cluster.psql("CREATE DATABASE app OWNER app")
        url = f"postgres://app:tls-test-pw@127.0.0.2:{cluster.tcp_port}/app?sslmode=verify-full&sslrootcert={ca}"

        project = bake(cookies, venv=True, local_port=str(free_port()), database="postgresql")
        stack = Stack(project)
        wrong = run([project / ".venv" / "bin" / "python", "manage.py", "migrate", "--noinput"], project,
                    env={"DATABASE_URL": url.replace(str(ca), str(other_ca))}, check=False)  # fmt: skip
        assert wrong.returncode != 0
        last = wrong.stderr.strip().splitlines()[-1]
        report(f"wrong CA: {last}")
        assert "certificate verify failed" in last, last
        with open(project / ".env", "a") as env:
            env.write(f"DATABASE_URL={url}\n")
        try:
            stack.make("up")
            assert not (project / "var" / "postgres").exists()  # no local cluster
            state = stack.supervisor().getProcessInfo(f"{stack.slug}-postgres")["statename"]
            assert state == "EXITED"
            assert "the local PostgreSQL stays off" in stack.log("postgres.log")
            health = requests.get(f"{stack.base_url}/healthz", timeout=10)
            assert health.status_code == 200 and health.json()["checks"]["database"] == "ok"
            stack.create_admin(PASSWORD)
            session = login(stack)
            assert get(stack, session, "/admin/").status_code == 200
            ssl = "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND usename = 'app'"
            assert int(cluster.psql(ssl)) >= 1  # gunicorn's persistent connections, over TLS
        finally:
            stop_stack(stack)
    finally:
        cluster.stop()
