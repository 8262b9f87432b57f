"""deploy/install.sh with database=postgresql, for real: Debian's PostgreSQL
cluster on port 5432, a role and database named after the app user, peer
authentication over /var/run/postgresql, then deploy/uninstall.sh with and
without --purge-data.

Root only, like test_deploy.py (whose Server class drives the site). Beside the
site the tests put a database of their own into the default cluster and a
second cluster on another port, and check that neither is touched; both are
removed at the end, and the default cluster is stopped again if it was down.

"A server without PostgreSQL installs it": the machine keeps its PostgreSQL
(other work uses it). The first install runs with DPKG_ADMINDIR pointing at a
copy of dpkg's database without the `postgresql` package, so install.sh's
check finds it missing, and with APT_CONFIG setting APT::Get::Simulate, so
the real `apt-get update` and `apt-get install postgresql` run against
Debian's archive and resolve the package without changing the machine.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import bake, commit_and_clone, free_port, project_module, require, run
from test_deploy import (
    DOMAIN,
    INSTALL_ENV_DROP,
    Server,
    nginx_running,
    require_root,
    stop_daemons_started_since,
    supervisord_running,
)

SLUG = "sst_deploy_pg"
CHOICES = {"project_slug": SLUG, "redis": "dedicated", "database": "postgresql", "session_engine": "cached_db"}
CONFLICT_SLUG = "sst_pg_conflict"
BYSTANDER_DB = "sst_pg_bystander"
OTHER_CLUSTER = "sst_pg_other"
SOCKET_DIR = "/var/run/postgresql"


# Debian's clusters ------------------------------------------------------------------


def clusters():
    """{(version, name): (port, status)} from pg_lsclusters."""
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout
    return {(f[0], f[1]): (int(f[2]), f[3]) for f in (line.split() for line in out.splitlines()) if f}


def default_cluster():
    """(version, name, status) of the cluster on port 5432."""
    found = [(v, n, status) for (v, n), (port, status) in clusters().items() if port == 5432]
    assert found, "no PostgreSQL cluster on port 5432 (pg_lsclusters)"
    return found[0]


def psql(sql, cluster=None, database="postgres", user="postgres"):
    """psql as an OS user (peer), unaligned tuples; returns stdout."""
    version, name, _ = default_cluster() if cluster is None else (*cluster, None)
    command = ["runuser", "-u", user, "--", "psql", "--cluster", f"{version}/{name}", "-X", "-q", "-At",
               "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql]  # fmt: skip
    result = subprocess.run(command, cwd="/", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def role_and_database(slug, cluster=None):
    """(role attributes or None, database owner or None)."""
    role = psql(
        f"SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolpassword IS NULL, "
        f"coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_authid WHERE rolname = '{slug}'",
        cluster,
    )
    owner = psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{slug}'", cluster)
    return role or None, owner or None


def start_default_cluster():
    version, name, status = default_cluster()
    if not status.startswith("online"):
        run(["pg_ctlcluster", version, name, "start"], "/")


def stop_default_cluster():
    version, name, status = default_cluster()
    if status.startswith("online"):
        run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], "/")


@pytest.fixture(scope="module")
def debian_cluster():
    """The default cluster's state before the module; put back afterwards."""
    require_root()
    for binary in ("pg_lsclusters", "pg_ctlcluster", "pg_createcluster", "psql", "curl"):
        require(binary)
    _, _, status = default_cluster()
    was_online = status.startswith("online")
    yield was_online
    if not was_online:
        stop_default_cluster()


def without_package(admindir, package):
    """A copy of dpkg's status database in which `package` is not installed."""
    admindir.mkdir()
    (admindir / "updates").mkdir()
    stanzas = Path("/var/lib/dpkg/status").read_text().split("\n\n")
    kept = [s for s in stanzas if not s.startswith(f"Package: {package}\n")]
    assert len(kept) == len(stanzas) - 1, f"{package} is not installed here"
    (admindir / "status").write_text("\n\n".join(kept))
    return admindir


# The site ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_site(debian_cluster, cookies_session, tmp_path_factory):
    """A bystander database in the default cluster and a second cluster, then
    a real install with database=postgresql (the default cluster stopped, so
    that install.sh starts it); everything removed at the end."""
    if Path(f"/webapps/{SLUG}").exists() or Path(f"/etc/supervisor/conf.d/{SLUG}.conf").exists():
        pytest.fail(f"/webapps/{SLUG} exists already: run its deploy/uninstall.sh --purge-data first")
    nginx_before, supervisord_before = nginx_running(), supervisord_running()
    workdir = tmp_path_factory.mktemp("deploy-pg")
    version, name, _ = default_cluster()
    other = (version, OTHER_CLUSTER)
    deployed = None
    try:
        start_default_cluster()
        assert role_and_database(SLUG) == (None, None), f"role or database {SLUG} exists: drop them first"
        psql(f"CREATE DATABASE {BYSTANDER_DB}")
        psql("CREATE TABLE t (x text); INSERT INTO t VALUES ('kept')", database=BYSTANDER_DB)
        port = free_port()
        run(["pg_createcluster", version, OTHER_CLUSTER, "--port", str(port), "--start"], "/")
        psql(f"CREATE ROLE {SLUG} LOGIN", other)  # the same name in another cluster: not ours to touch
        psql("CREATE DATABASE other_site", other)
        psql("CREATE TABLE t (x text); INSERT INTO t VALUES ('other')", other, database="other_site")
        if not debian_cluster:
            stop_default_cluster()  # install.sh must start it
        project = commit_and_clone(bake(cookies_session, domain_name=DOMAIN, **CHOICES))
        deployed = Server(project, workdir, CHOICES)
        deployed.other_cluster = other
        deployed.other_before = psql("SELECT datname FROM pg_database ORDER BY 1", other)
        # dpkg says postgresql is missing; apt only simulates (see the docstring).
        apt_conf = workdir / "apt-simulate.conf"
        apt_conf.write_text('APT::Get::Simulate "true";\n')
        env = {key: value for key, value in os.environ.items() if key not in INSTALL_ENV_DROP}
        env |= {"DPKG_ADMINDIR": str(without_package(workdir / "dpkg", "postgresql")), "APT_CONFIG": str(apt_conf)}
        result = deployed.run_install_sh("first run", env)
        print(f"install.sh (first run): {deployed.timings['first run']:.1f} s")
        if result.returncode != 0:
            pytest.fail(f"install.sh exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        yield deployed
    finally:
        if deployed and deployed.installed():
            deployed.uninstall("--purge-data")
        stop_daemons_started_since(nginx_before, supervisord_before)
        if OTHER_CLUSTER in {n for _, n in clusters()}:
            subprocess.run(["pg_dropcluster", version, OTHER_CLUSTER, "--stop"], capture_output=True)
        start_default_cluster()
        psql(f"DROP DATABASE IF EXISTS {BYSTANDER_DB}")
        psql(f"DROP DATABASE IF EXISTS {SLUG}")
        psql(f"DROP ROLE IF EXISTS {SLUG}")
        if deployed:
            for label, seconds in deployed.timings.items():
                print(f"install.sh database=postgresql {label}: {seconds:.1f} s")


def test_install_takes_the_apt_path_and_starts_the_default_cluster(pg_site, debian_cluster):
    output = pg_site.outputs["first run"]
    assert "installing: postgresql" in output  # dpkg said missing; apt resolved it against Debian's archive
    version, name, status = default_cluster()
    assert status.startswith("online")
    state = "running" if debian_cluster else "started"
    assert f"cluster {version}/{name} on port 5432: {state}" in output
    assert f"role {SLUG} created" in output and f"database {SLUG} created" in output


def test_healthz_and_no_password_anywhere(pg_site):
    status, _, body = pg_site.get("/healthz")
    assert status == 200, body
    values = project_module(pg_site.project, f"{SLUG}/env.py").read_env_file(pg_site.app_root / ".env")
    url = values["DATABASE_URL"]
    assert url == f"postgres:///{SLUG}?host={SOCKET_DIR}"
    parts = urlsplit(url)
    assert parts.password is None and parts.hostname is None and parts.port is None
    assert parse_qs(parts.query) == {"host": [SOCKET_DIR]}
    assert not [key for key in values if "PASSWORD" in key and values[key]]
    # The role: login by peer only, no password, no other right, this site's comment.
    role, owner = role_and_database(SLUG)
    superuser, createdb, createrole, login, no_password, comment = role.split("|")
    assert (superuser, createdb, createrole, login, no_password) == ("f", "f", "f", "t", "t")
    assert SLUG in comment and "socketstack" in comment
    assert owner == SLUG
    # Other roles may not connect to the site's database (no CONNECT for PUBLIC).
    assert psql(f"SELECT has_database_privilege('public', '{SLUG}', 'CONNECT')") == "f"


def test_admin_login_and_sessions_live_in_postgresql(pg_site):
    pg_site.create_admin()
    pg_site.login()
    status, _, body = pg_site.get("/admin/")
    assert status == 200 and "Log out" in body
    # As the app user, by peer over the socket, like the site: the migrations
    # made its tables, and the cached_db session row is there.
    count = psql("SELECT count(*) FROM django_session", database=SLUG, user=SLUG)
    assert int(count) >= 1
    assert psql("SELECT tableowner FROM pg_tables WHERE tablename = 'auth_user'", database=SLUG, user=SLUG) == SLUG


def documented_commands(project):
    """The server's pg_dump line and restore block from the generated docs/backups.md."""
    text = (project / "docs" / "backups.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    backup = next(block for block in blocks if "pg_dump" in block)
    # The pg_dump command (with its continuation line), without the other stores' lines.
    dump = re.search(r"^sudo runuser .*pg_dump.*\\\n.*\n", backup, re.M).group(0)
    restore = next(block for block in blocks if block.startswith("DUMP="))
    return dump, restore.split("\n", 1)[1]


def run_as_root_with_sudo(script, **variables):
    """The docs address a sudo user; the tests are root, where sudo adds nothing."""
    prelude = 'set -euo pipefail\nsudo() { "$@"; }\n' + "".join(f"{k}={v}\n" for k, v in variables.items())
    return subprocess.run(["bash", "-c", prelude + script], cwd="/", capture_output=True, text=True, timeout=300)


def test_documented_backup_restores_the_admin(pg_site):
    dump, restore = documented_commands(pg_site.project)
    dumps = set(Path("/root").glob(f"{SLUG}-db-*.dump"))
    try:
        result = run_as_root_with_sudo(dump)
        assert result.returncode == 0, result.stderr
        [dump_file] = set(Path("/root").glob(f"{SLUG}-db-*.dump")) - dumps
        listing = subprocess.run(["pg_restore", "--list", str(dump_file)], capture_output=True, text=True)
        assert listing.returncode == 0 and "TABLE DATA public auth_user" in listing.stdout
        # Lose the admin: the login fails.
        psql("DELETE FROM auth_user WHERE username = 'admin'", database=SLUG, user=SLUG)
        with pytest.raises(AssertionError):
            pg_site.login()
        result = run_as_root_with_sudo(restore, DUMP=dump_file)
        assert result.returncode == 0, result.stdout + result.stderr
        assert psql("SELECT username FROM auth_user", database=SLUG, user=SLUG) == "admin"
        wait_healthy(pg_site)
        pg_site.login()
        status, _, body = pg_site.get("/admin/")
        assert status == 200 and "Log out" in body
    finally:
        for path in set(Path("/root").glob(f"{SLUG}-db-*.dump")) - dumps:
            path.unlink()


def wait_healthy(site, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, status, _, _ = site.curl(f"https://{DOMAIN}/healthz", jar=False)
        if code == 0 and status == 200:
            return
        time.sleep(0.3)
    pytest.fail("https /healthz is not 200 again")


def test_second_install_keeps_the_login(pg_site):
    pg_site.login()
    pg_site.install("second run")
    output = pg_site.outputs["second run"]
    assert f"role {SLUG} exists: kept" in output and f"database {SLUG} exists: kept" in output
    assert "all present: postgresql" in output
    status, _, body = pg_site.get("/admin/")
    assert status == 200 and "Log out" in body, "the second install logged the user out"


def test_cluster_down_is_a_503_naming_database_and_back_without_restarts(pg_site):
    """docs/runbook.md's server line: stop Debian's cluster, /healthz names
    `database`; start it, /healthz is 200 again with nothing of the site restarted."""
    version, name, _ = default_cluster()
    supervisorctl = ["supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "pid", f"{SLUG}:{SLUG}-gunicorn"]
    gunicorn = subprocess.run(supervisorctl, capture_output=True, text=True)
    run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], "/")
    try:
        status, _, body = pg_site.get("/healthz", jar=False)
        assert status == 503, body
        assert json.loads(body)["failed"] == ["database"]
    finally:
        run(["pg_ctlcluster", version, name, "start"], "/")
    started = time.monotonic()
    wait_healthy(pg_site)
    print(f"/healthz 200 again {time.monotonic() - started:.2f} s after pg_ctlcluster start returned")
    again = subprocess.run(supervisorctl, capture_output=True, text=True)
    assert gunicorn.stdout.strip().isdigit() and again.stdout == gunicorn.stdout  # the same gunicorn master
    pg_site.login()


def test_other_cluster_and_databases_untouched(pg_site):
    other = pg_site.other_cluster
    assert clusters()[other][1].startswith("online")
    assert psql("SELECT datname FROM pg_database ORDER BY 1", other) == pg_site.other_before
    assert psql("SELECT x FROM t", other, database="other_site") == "other"
    # Its role of the same name is not the site's: no comment, no database.
    assert role_and_database(SLUG, other) == ("f|f|f|t|t|", None)
    assert psql("SELECT x FROM t", database=BYSTANDER_DB) == "kept"


def test_uninstall_keeps_the_database_then_purge_drops_it(pg_site):
    result = pg_site.uninstall()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"the PostgreSQL database '{SLUG}' and its role stay" in output
    assert "--purge-data` drops them" in output
    assert not pg_site.app_root.exists()
    assert not Path(f"/etc/supervisor/conf.d/{SLUG}.conf").exists()
    assert not Path(f"/etc/nginx/sites-enabled/{SLUG}.conf").exists()
    role, owner = role_and_database(SLUG)
    assert role is not None and owner == SLUG
    assert psql(f"SELECT username FROM {SLUG}.public.auth_user", database=SLUG) == "admin"
    result = pg_site.uninstall("--purge-data")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"--purge-data: the PostgreSQL database '{SLUG}' and its role are dropped" in output
    assert role_and_database(SLUG) == (None, None)
    assert psql("SELECT x FROM t", database=BYSTANDER_DB) == "kept"
    assert psql("SELECT x FROM t", pg_site.other_cluster, database="other_site") == "other"


# Bad input: a role or database of the same name that is not the site's ---------------


@pytest.fixture(scope="module")
def conflict_project(debian_cluster, cookies_session):
    return commit_and_clone(bake(cookies_session, project_slug=CONFLICT_SLUG, domain_name=DOMAIN, **{
        key: value for key, value in CHOICES.items() if key != "project_slug"
    }))  # fmt: skip


CONFLICTS = {
    "superuser": (
        f"CREATE ROLE {CONFLICT_SLUG} LOGIN SUPERUSER",
        f"install.sh: ERROR: PostgreSQL role '{CONFLICT_SLUG}' (cluster {{cluster}}) is a superuser",
    ),
    "foreign-role": (
        f"CREATE ROLE {CONFLICT_SLUG} LOGIN; CREATE DATABASE {CONFLICT_SLUG} OWNER {CONFLICT_SLUG}",
        f"install.sh: ERROR: PostgreSQL role '{CONFLICT_SLUG}' (cluster {{cluster}}) exists and install.sh did not "
        "create it",
    ),
    "database-of-another-role": (
        f"CREATE DATABASE {CONFLICT_SLUG}",
        f"install.sh: ERROR: PostgreSQL database '{CONFLICT_SLUG}' (cluster {{cluster}}) is owned by role 'postgres'",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFLICTS))
def test_role_or_database_not_the_sites_stops_install(conflict_project, case):
    setup, first_line = CONFLICTS[case]
    start_default_cluster()
    version, name, _ = default_cluster()
    first_line = first_line.format(cluster=f"{version}/{name}")
    assert role_and_database(CONFLICT_SLUG) == (None, None)
    try:
        for statement in setup.split("; "):
            psql(statement)
        if "DATABASE" in setup:
            psql("CREATE TABLE t (x text); INSERT INTO t VALUES ('theirs')", database=CONFLICT_SLUG)
        before = role_and_database(CONFLICT_SLUG)
        result = run([conflict_project / "deploy" / "install.sh"], conflict_project, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stderr.splitlines()
        assert lines[0].startswith(first_line), lines
        assert "changed no role and no database" in lines[0] and "Rename" in lines[0]
        assert len(lines) == 1, lines
        # Nothing dropped or changed, nothing of the site made.
        assert role_and_database(CONFLICT_SLUG) == before
        if "DATABASE" in setup:
            assert psql("SELECT x FROM t", database=CONFLICT_SLUG) == "theirs"
        assert not Path(f"/webapps/{CONFLICT_SLUG}").exists()
        assert subprocess.run(["id", CONFLICT_SLUG], capture_output=True).returncode != 0
        # uninstall.sh --purge-data drops only what install.sh made: here, nothing.
        result = run([conflict_project / "deploy" / "uninstall.sh", "--purge-data"], conflict_project, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        # Its last word, and its only error (nginx may say something on stderr when it reloads).
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
        assert errors == result.stderr.splitlines()[-1:], result.stderr
        assert (
            errors[0].startswith("uninstall.sh: ERROR: --purge-data: PostgreSQL ")
            and "nothing was dropped" in errors[0]
        )
        assert role_and_database(CONFLICT_SLUG) == before
        if "DATABASE" in setup:
            assert psql("SELECT x FROM t", database=CONFLICT_SLUG) == "theirs"
    finally:
        psql(f"DROP DATABASE IF EXISTS {CONFLICT_SLUG}")
        psql(f"DROP ROLE IF EXISTS {CONFLICT_SLUG}")


def test_uninstall_refuses_keep_and_purge_together(cookies_session):
    """Two flags that contradict each other stop uninstall.sh before it looks at the server."""
    project = bake(cookies_session, project_slug=CONFLICT_SLUG, domain_name=DOMAIN, database="postgresql")
    result = run([project / "deploy" / "uninstall.sh", "--keep-data", "--purge-data"], project, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "uninstall.sh: ERROR: --keep-data and --purge-data contradict each other: give one of them."
    ]
    assert result.stdout == ""
