"""deploy/install.sh ROLE=data and ROLE=app on this machine, for real.

One baked project is installed twice: ROLE=data (Redis cache and sessions
over TLS with ACL users, a sessions replica, three Sentinels, a PostgreSQL
cluster of its own) on the loopback addresses 127.0.0.4-6, then ROLE=app
(nginx, gunicorn, Django) pointed at it with the lines ROLE=data printed.
Both run a second time, then uninstall.sh removes each role. Like
test_deploy.py, this needs root; it reuses that module's Server for the app
host. Daemons the test starts (nginx, supervisord) are stopped again.

What one machine cannot show: the data tier on other hosts than the app, and
the replica and sentinels on hosts of their own. The loopback aliases give each
its own address (the replica and sentinels announce them, the certificate
names them), so every connection here crosses "hosts" by address, as it would
on a private network.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import bake, commit_and_clone, project_processes, require, run
from postgres import postgres_major
from test_deploy import (
    INSTALL_ENV_DROP,
    Server,
    nginx_running,
    require_root,
    stop_daemons_started_since,
    supervisord_running,
)

SLUG = "sst_roles"
DOMAIN = "roles.socketstack.test"
DATA_ROOT = Path(f"/webapps/{SLUG}-data")
ADDRESS, REPLICA, THIRD = "127.0.0.4", "127.0.0.5", "127.0.0.6"
CACHE_PORT, SESSIONS_PORT, REPLICA_PORT, POSTGRES_PORT = 17401, 17402, 17403, 17420
SENTINELS = [(ADDRESS, 17411), (REPLICA, 17412), (THIRD, 17413)]
SERVICE = f"{SLUG}-sessions"
DATA_ENV = {
    "ROLE": "data",
    "DATA_ADDRESS": ADDRESS,
    "REDIS_CACHE_PORT": str(CACHE_PORT),
    "REDIS_SESSIONS_PORT": str(SESSIONS_PORT),
    "REDIS_SESSIONS_REPLICA": f"{REPLICA}:{REPLICA_PORT}",
    "REDIS_SESSIONS_SENTINELS": ",".join(f"{host}:{port}" for host, port in SENTINELS),
    "POSTGRES_PORT": str(POSTGRES_PORT),
}
# What install.sh reads for the roles: never inherited from the test's environment.
ROLE_ENV_DROP = (
    *INSTALL_ENV_DROP, "ROLE", "DATA_ADDRESS", "DATA_ROOT", "REDIS_CACHE_URL", "REDIS_SESSIONS_URL",
    "REDIS_CACHE_SENTINELS", "REDIS_CACHE_SENTINEL_SERVICE", "REDIS_SESSIONS_SENTINELS",
    "REDIS_SESSIONS_SENTINEL_SERVICE", "REDIS_SENTINEL_PASSWORD", "REDIS_TLS_CA_FILE", "DATABASE_URL",
)  # fmt: skip


def clean_env(**extra):
    return {**{k: v for k, v in os.environ.items() if k not in ROLE_ENV_DROP}, **extra}


def read_env(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")


def redis_cli(address, port, *args, user=SLUG, password=None, cacert=None, tls=True):
    secrets = read_env(DATA_ROOT / "secrets.env")
    command = ["redis-cli", "-h", address, "-p", str(port), "--no-auth-warning"]
    if tls:
        command += ["--tls", "--cacert", str(cacert or DATA_ROOT / "tls" / "ca.pem")]
    if user:
        command += ["--user", user]
    env = {key: value for key, value in os.environ.items() if key != "REDISCLI_AUTH"}
    password = secrets["REDIS_APP_PASSWORD"] if password is None else password
    if password:  # "": no AUTH at all
        env["REDISCLI_AUTH"] = password
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30, env=env)
    return (result.stdout + result.stderr).strip()


def sentinel(address, port, *args):
    password = read_env(DATA_ROOT / "secrets.env")["REDIS_SENTINEL_PASSWORD"]
    return redis_cli(address, port, "sentinel", *args, user=None, password=password)


def psql(sslmode="verify-full", rootcert=None, query="select ssl from pg_stat_ssl where pid = pg_backend_pid()"):
    password = read_env(DATA_ROOT / "secrets.env")["POSTGRES_PASSWORD"]
    conninfo = (
        f"host={ADDRESS} port={POSTGRES_PORT} dbname={SLUG} user={SLUG} sslmode={sslmode} "
        f"sslrootcert={rootcert or DATA_ROOT / 'tls' / 'ca.pem'} connect_timeout=10"
    )
    env = {**os.environ, "PGPASSWORD": password}
    return subprocess.run(["psql", conninfo, "-Atc", query], capture_output=True, text=True, timeout=30, env=env)


def data_pids():
    """pid of every data-tier process: the supervisor programs and the postmaster."""
    status = subprocess.run(
        ["supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "status", f"{SLUG}-data:*"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    pids = dict(re.findall(r"^\S+:(\S+)\s+RUNNING\s+pid (\d+)", status, re.M))
    pids["postgres"] = Path(f"/var/run/postgresql/{postgres_major()}-{SLUG}.pid").read_text().strip()
    return pids


def session_cookie(jar):
    for line in jar.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 7 and fields[5] == "sessionid":
            return fields[6]
    return None


def postgres_clusters():
    return subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout


class DataHost:
    def __init__(self, project):
        self.project = project
        self.timings = {}
        self.outputs = {}

    def install(self, label):
        started = time.monotonic()
        result = subprocess.run(
            [self.project / "deploy" / "install.sh"], cwd=self.project, env=clean_env(**DATA_ENV),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        self.timings[label] = time.monotonic() - started
        self.outputs[label] = result.stdout + result.stderr
        print(f"install.sh ROLE=data ({label}): {self.timings[label]:.1f} s")
        if result.returncode != 0:
            pytest.fail(f"ROLE=data install.sh ({label}) exited {result.returncode}\n{self.outputs[label]}")
        return result


@pytest.fixture(scope="module")
def hosts(cookies_session, tmp_path_factory):
    """The data host, then the app host pointed at it; uninstall.sh for both at the end."""
    require_root()
    for binary in ("curl", "redis-cli", "psql", "pg_lsclusters", "openssl"):
        require(binary)
    if Path(f"/webapps/{SLUG}").exists() or DATA_ROOT.exists() or f" {SLUG} " in postgres_clusters():
        pytest.fail(f"/webapps/{SLUG}, {DATA_ROOT} or the {SLUG} cluster exists already: uninstall them first")
    nginx_before, supervisord_before = nginx_running(), supervisord_running()
    clusters_before = postgres_clusters()
    project = commit_and_clone(bake(cookies_session, project_slug=SLUG, domain_name=DOMAIN))
    data = DataHost(project)
    app = Server(project, tmp_path_factory.mktemp("roles"), {"redis": "dedicated"}, domain=DOMAIN)
    data.clusters_before = clusters_before
    try:
        data.install("first run")
        lines = read_env(DATA_ROOT / "app.env")
        app.lines = lines
        # Every line ROLE=data printed, DATABASE_URL (verify-full) included:
        # the app host keeps no data of its own.
        app.app_env = dict(lines)
        result = app.run_install_sh("first run", clean_env(ROLE="app", DOMAIN=DOMAIN, **app.app_env))
        print(f"install.sh ROLE=app (first run): {app.timings['first run']:.1f} s")
        assert result.returncode == 0, app.outputs["first run"]
        yield data, app
    finally:
        if app.installed():
            app.uninstall_result = run([project / "deploy" / "uninstall.sh"], project, env=clean_env(ROLE="app"),
                                       timeout=300, check=False)  # fmt: skip
        if DATA_ROOT.exists() or Path(f"/etc/supervisor/conf.d/{SLUG}-data.conf").exists():
            data.uninstall_result = run([project / "deploy" / "uninstall.sh"], project,
                                        env=clean_env(ROLE="data"), timeout=300, check=False)  # fmt: skip
        stop_daemons_started_since(nginx_before, supervisord_before)
        for label, seconds in {**{f"data {k}": v for k, v in data.timings.items()},
                               **{f"app {k}": v for k, v in app.timings.items()}}.items():  # fmt: skip
            print(f"install.sh {label}: {seconds:.1f} s")


def test_data_redis_speaks_tls_with_acl_users_only(hosts):
    data, _ = hosts
    for port in (CACHE_PORT, SESSIONS_PORT):
        assert redis_cli(ADDRESS, port, "ping") == "PONG"
        assert redis_cli(ADDRESS, port, "acl", "whoami") == SLUG
        # No default user, no wrong password, no plain TCP, no other CA.
        assert "NOAUTH" in redis_cli(ADDRESS, port, "ping", user=None, password="")
        assert "WRONGPASS" in redis_cli(ADDRESS, port, "ping", user="default", password="x")
        assert "WRONGPASS" in redis_cli(ADDRESS, port, "ping", password="wrong-password")
        assert "PONG" not in redis_cli(ADDRESS, port, "ping", tls=False)
        other_ca = redis_cli(ADDRESS, port, "ping", cacert="/etc/ssl/certs/ca-certificates.crt")
        assert "certificate verify failed" in other_ca, other_ca
        # The app's user may not reconfigure Redis.
        assert "NOPERM" in redis_cli(ADDRESS, port, "config", "get", "maxmemory-policy")
        # Not on the other loopback addresses: only the private address listens.
        assert "PONG" not in redis_cli("127.0.0.1", port, "ping")
    # The same eviction and persistence as the single box's deploy/redis/*.conf.
    cache_conf = (DATA_ROOT / "redis" / "cache.conf").read_text()
    sessions_conf = (DATA_ROOT / "redis" / "sessions.conf").read_text()
    assert "maxmemory-policy allkeys-lru" in cache_conf and "appendonly no" in cache_conf
    assert "maxmemory-policy noeviction" in sessions_conf and "appendonly yes" in sessions_conf
    for conf in (cache_conf, sessions_conf):
        assert "protected-mode yes" in conf and "user default off" in conf and "\nport 0\n" in conf
    replication = redis_cli(ADDRESS, SESSIONS_PORT, "info", "replication")
    assert "role:master" in replication and f"ip={REPLICA},port={REPLICA_PORT},state=online" in replication
    assert "role:slave" in redis_cli(REPLICA, REPLICA_PORT, "info", "replication")


def test_data_sentinels_agree_on_the_sessions_primary(hosts):
    for address, port in SENTINELS:
        assert sentinel(address, port, "get-master-addr-by-name", SERVICE).split() == [ADDRESS, str(SESSIONS_PORT)]
        fields = sentinel(address, port, "master", SERVICE).split("\n")
        info = dict(zip(fields[::2], fields[1::2], strict=True))
        assert info["quorum"] == "2" and info["num-other-sentinels"] == "2", info
        # A replica is known after the first INFO round (up to ~10 s).
        for _ in range(60):
            if f"{REPLICA}:{REPLICA_PORT}" in sentinel(address, port, "replicas", SERVICE):
                break
            time.sleep(0.5)
        assert f"{REPLICA}:{REPLICA_PORT}" in sentinel(address, port, "replicas", SERVICE)
    assert "NOAUTH" in redis_cli(ADDRESS, SENTINELS[0][1], "ping", user=None, password="")


def test_data_postgres_over_tls_with_scram(hosts):
    data, _ = hosts
    verified = psql()
    assert verified.returncode == 0 and verified.stdout.strip() == "t", verified.stderr
    rules = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql", "-p", str(POSTGRES_PORT), "-Atc",
         "select type, auth_method from pg_hba_file_rules order by line_number"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert rules.stdout.split() == ["local|peer", "hostssl|scram-sha-256"], rules
    plain = psql(sslmode="disable")
    assert plain.returncode != 0 and "no pg_hba.conf entry" in plain.stderr and "no encryption" in plain.stderr
    wrong_ca = psql(rootcert="/etc/ssl/certs/ca-certificates.crt")
    assert wrong_ca.returncode != 0 and "certificate verify failed" in wrong_ca.stderr, wrong_ca.stderr
    # A cluster of its own: Debian's default one is as it was.
    main_before = [line.split() for line in data.clusters_before.splitlines() if " main " in line]
    assert [line.split() for line in postgres_clusters().splitlines() if " main " in line] == main_before
    assert re.search(rf"^{postgres_major()}\s+{SLUG}\s+{POSTGRES_PORT}\s+online", postgres_clusters(), re.M)


def test_data_secrets_written_once_and_lines_printed(hosts):
    data, _ = hosts
    for name in ("secrets.env", "app.env", "tls/ca.key", "tls/server.key"):
        assert (DATA_ROOT / name).stat().st_mode & 0o777 == 0o600, name
        assert (DATA_ROOT / name).stat().st_uid == 0
    assert (DATA_ROOT / "tls" / "ca.pem").stat().st_mode & 0o777 == 0o644
    output = data.outputs["first run"]
    for line in (DATA_ROOT / "app.env").read_text().splitlines():
        assert line in output
    lines = read_env(DATA_ROOT / "app.env")
    assert lines["REDIS_SESSIONS_URL"].startswith(f"rediss://{SLUG}:")
    assert lines["REDIS_SESSIONS_SENTINELS"] == DATA_ENV["REDIS_SESSIONS_SENTINELS"]
    assert lines["REDIS_TLS_CA_FILE"] == str(DATA_ROOT / "tls" / "ca.pem")
    assert "sslmode=verify-full" in lines["DATABASE_URL"]
    # No secret in supervisor's file.
    supervisor = Path(f"/etc/supervisor/conf.d/{SLUG}-data.conf").read_text()
    for value in read_env(DATA_ROOT / "secrets.env").values():
        assert value not in supervisor


def test_app_serves_healthz_and_keeps_the_login_in_the_remote_redis(hosts):
    _, app = hosts
    status, _, body = app.get("/healthz")
    assert status == 200, body
    # No Redis of its own: supervisor runs gunicorn only.
    supervisor = Path(f"/etc/supervisor/conf.d/{SLUG}.conf").read_text()
    assert "redis-server" not in supervisor and supervisor.count(f"user={SLUG}") == 1
    assert not [path for path in (app.app_root / "run").iterdir() if path.name.startswith("redis")]
    env = read_env(app.app_root / ".env")
    for name, value in app.app_env.items():
        assert env[name] == value, name
    app.create_admin()
    app.login()
    status, _, body = app.get("/admin/")
    assert status == 200 and "Log out" in body
    session = session_cookie(app.jar)
    keys = redis_cli(ADDRESS, SESSIONS_PORT, "--scan", "--pattern", f"*{session}*")
    assert session and session in keys, keys
    # Replicated to the replica too.
    for _ in range(20):
        if session in redis_cli(REPLICA, REPLICA_PORT, "--scan", "--pattern", f"*{session}*"):
            break
        time.sleep(0.1)
    assert session in redis_cli(REPLICA, REPLICA_PORT, "--scan", "--pattern", f"*{session}*")


def test_second_runs_change_nothing_and_keep_the_login(hosts):
    data, app = hosts
    app.login()
    pids = data_pids()
    assert len(pids) == 7, pids
    # Redis and Sentinel write their own files and logs; install.sh's files must not change.
    files = sorted(
        path for path in DATA_ROOT.rglob("*") if path.is_file() and path.parent.name not in ("redis", "logs")
        and "/redis/" not in str(path)
    )  # fmt: skip
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files}
    assert DATA_ROOT / "secrets.env" in before and DATA_ROOT / "generated" / "sessions.conf" in before
    app_env_before = (app.app_root / ".env").read_bytes()
    data.install("second run")
    output = data.outputs["second run"]
    assert "kept: every secret exists" in output and "no config changed: nothing restarted" in output
    assert "running, settings unchanged" in output
    assert data_pids() == pids
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files} == before
    result = app.run_install_sh("second run", clean_env(ROLE="app", DOMAIN=DOMAIN, **app.app_env))
    print(f"install.sh ROLE=app (second run): {app.timings['second run']:.1f} s")
    assert result.returncode == 0, app.outputs["second run"]
    assert "unchanged: the data tier URLs" in app.outputs["second run"]
    assert (app.app_root / ".env").read_bytes() == app_env_before
    status, _, body = app.get("/admin/")
    assert status == 200 and "Log out" in body, "the second runs logged the user out"
    assert data_pids() == pids


def test_uninstall_each_role_leaves_nothing(hosts):
    data, app = hosts
    project = app.project
    result = run([project / "deploy" / "uninstall.sh"], project, env=clean_env(ROLE="app"), timeout=300)
    assert not app.app_root.exists()
    # The data tier still serves: the app's uninstall left it alone.
    assert redis_cli(ADDRESS, SESSIONS_PORT, "ping") == "PONG"
    # --keep-data: everything stops, the cluster and the data root stay.
    secrets = (DATA_ROOT / "secrets.env").read_bytes()
    run([project / "deploy" / "uninstall.sh", "--keep-data"], project, env=clean_env(ROLE="data"), timeout=300)
    assert (DATA_ROOT / "secrets.env").read_bytes() == secrets and (DATA_ROOT / "tls" / "ca.key").exists()
    assert list((DATA_ROOT / "redis" / f"sessions-{SESSIONS_PORT}").rglob("*.aof"))
    assert re.search(rf"^{postgres_major()}\s+{SLUG}\s+{POSTGRES_PORT}\s+down", postgres_clusters(), re.M)
    assert not Path(f"/etc/supervisor/conf.d/{SLUG}-data.conf").exists()
    assert "PONG" not in redis_cli(ADDRESS, SESSIONS_PORT, "ping")
    result = run([project / "deploy" / "uninstall.sh"], project, env=clean_env(ROLE="data"), timeout=300)
    assert "dropped" in result.stdout
    assert not DATA_ROOT.exists()
    assert not Path(f"/etc/supervisor/conf.d/{SLUG}-data.conf").exists()
    assert f" {SLUG} " not in postgres_clusters()
    major = postgres_major()
    for path in (
        f"/etc/postgresql/{major}/{SLUG}",
        f"/var/lib/postgresql/{major}/{SLUG}",
        f"/var/log/postgresql/postgresql-{major}-{SLUG}.log",
    ):
        assert not Path(path).exists(), path
    assert project_processes(DATA_ROOT) == [] and project_processes(app.app_root) == []
    status = subprocess.run(["supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "status"],
                            capture_output=True, text=True).stdout  # fmt: skip
    assert SLUG not in status
    for address, port in [(ADDRESS, CACHE_PORT), (ADDRESS, SESSIONS_PORT), *SENTINELS, (ADDRESS, POSTGRES_PORT)]:
        probe = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"], capture_output=True)
        assert probe.returncode != 0, f"{address}:{port} still listens"
    enabled = sorted(path.name for path in Path("/etc/nginx/sites-enabled").iterdir())
    assert not [name for name in enabled if SLUG in name or "socketstack" in name], enabled


@pytest.mark.parametrize(
    "env, first_line",
    [
        ({"ROLE": "bogus"}, "install.sh: ERROR: ROLE='bogus' is not a role: give ROLE=single"),
        ({"ROLE": "app"}, "install.sh: ERROR: REDIS_CACHE_URL='': ROLE=app runs no Redis of its own: give"),
        (
            {"ROLE": "app", "REDIS_CACHE_URL": "unix:///run/redis.sock?db=0", "REDIS_SESSIONS_URL": "rediss://h:1/0"},
            "install.sh: ERROR: REDIS_CACHE_URL='unix:///run/redis.sock?db=0': ROLE=app runs no Redis",
        ),
        (
            {
                "ROLE": "app",
                "REDIS_CACHE_URL": "rediss://h:1/0",
                "REDIS_SESSIONS_URL": "rediss://h:1/0",
                "REDIS_SESSIONS_SENTINELS": "10.0.0.5:26379,10.0.0.6",
                "REDIS_SESSIONS_SENTINEL_SERVICE": "s",
            },
            "install.sh: ERROR: REDIS_SESSIONS_SENTINELS='10.0.0.5:26379,10.0.0.6': '10.0.0.6' is not host:port",
        ),
        (
            {
                "ROLE": "app",
                "REDIS_CACHE_URL": "rediss://h:1/0",
                "REDIS_SESSIONS_URL": "rediss://h:1/0",
                "REDIS_TLS_CA_FILE": "/no/such/ca.pem",
            },
            "install.sh: ERROR: REDIS_TLS_CA_FILE='/no/such/ca.pem' is not a readable file",
        ),
        ({"ROLE": "data"}, "install.sh: ERROR: DATA_ADDRESS='' is not an IPv4 address: give the private address"),
        (
            {"ROLE": "data", "DATA_ADDRESS": "10.0.0.5", "REDIS_SESSIONS_SENTINELS": "10.0.0.5:26379"},
            "install.sh: ERROR: REDIS_SESSIONS_SENTINELS='10.0.0.5:26379' names 1 sentinels: give three",
        ),
    ],
    ids=["bogus", "app-no-urls", "app-unix-url", "sentinel-no-port", "app-no-ca", "data-no-address", "one-sentinel"],
)
def test_bad_role_input_fails_first_with_the_fix(cookies_session, env, first_line):
    """Refused in one line before anything changes (and before the root check)."""
    project = bake(cookies_session, project_slug="sst_roles_bad", domain_name=DOMAIN)
    result = run([project / "deploy" / "install.sh"], project, env=clean_env(**env), check=False)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert lines[0].startswith(first_line), lines[:3]
    assert len(lines) == 1
    assert not Path("/webapps/sst_roles_bad").exists() and not Path("/webapps/sst_roles_bad-data").exists()


def test_uninstall_refuses_an_unknown_role(cookies_session):
    require_root()
    project = bake(cookies_session, project_slug="sst_roles_bad", domain_name=DOMAIN)
    result = run([project / "deploy" / "uninstall.sh"], project, env=clean_env(ROLE="bogus"), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("uninstall.sh: ERROR: ROLE='bogus' is not a role"), result.stderr


def test_data_processes_run_only_where_their_address_is(cookies_session):
    """Spanning hosts: each host runs the processes whose address it owns (the
    rest is another host's part). All of 127/8 is this machine; 192.0.2.0/24
    (TEST-NET-1) is nobody's."""
    project = bake(cookies_session, project_slug="sst_roles_bad", domain_name=DOMAIN)
    script = ". deploy/common.sh && . deploy/roles.sh && for a in $*; do is_local_address $a && echo $a; done"
    result = run(["bash", "-c", script, "-", "127.0.0.5", "192.0.2.7", "127.0.0.6"], project)
    assert result.stdout.split() == ["127.0.0.5", "127.0.0.6"]
