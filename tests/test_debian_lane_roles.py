"""install.sh's other paths in the second Debian lane: ROLE=data + ROLE=app,
uninstall.sh of each role, and certbot against Debian's pebble, all in a
root of the other release (tests/debian_root.py: trixie on a Debian 12
machine, so certbot 4.0 there while the machine's test_acme.py runs 2.1).

What test_deploy_roles.py and test_acme.py do on the machine, redone inside
one namespace (loopback only: every 127.x address is the namespace's own,
ports 80 and 443 are its own, pebble and its DNS run there too). The root is
debian_root's cached one (its PACKAGES carry certbot and pebble), the wheels
debian_root's wheelhouse, mounted on /wheels. Nothing here touches the
machine's services.
"""

import re
import time

import debian_root
import pytest
from conftest import bake
from test_debian_lane import (
    FAILURE_LINE,
    LOGIN_DEFS,
    PIP_ENV,
    PYTHON,
    SUITE,
    WHEELS,
    Browser,
    clone,
    create_admin,
    git_commit,
)
from test_deploy_roles import ADDRESS, DATA_ENV, REPLICA, REPLICA_PORT, SESSIONS_PORT

ROLES = {"project_slug": "sst_lroles", "domain_name": "roles.socketstack.test"}
ACME = {"project_slug": "sst_lacme", "domain_name": "acme.socketstack.test"}
# A postgresql bake: ROLE=data makes its cluster, the app reaches it over TLS (DATABASE_URL).
BAKES = {
    "roles": {"project_slug": ROLES["project_slug"], "domain_name": ROLES["domain_name"], "database": "postgresql"},
    "acme": {"project_slug": ACME["project_slug"], "domain_name": ACME["domain_name"]},
}
EMAIL = "ops@example.com"
# pebble inside the namespace: its ports are the namespace's own, fixed.
PEBBLE_PORT, PEBBLE_MANAGEMENT, DNS_PORT, DNS_MANAGEMENT = 14000, 15000, 8053, 8055
PEBBLE_DIR = "/srv/pebble"
PEBBLE_CA = f"{PEBBLE_DIR}/listener-ca.pem"
ACME_SERVER = f"https://127.0.0.1:{PEBBLE_PORT}/dir"
TIMES = debian_root.Timings()
timed = TIMES.timed


@pytest.fixture(scope="module")
def baked(cookies_session):
    """{name: project}: each bake made on the machine without a .venv, committed."""
    debian_root.require_lane()
    projects = {}
    with timed("bake + commit on the machine"):
        for name, answers in BAKES.items():
            project = bake(cookies_session, python="python3", **answers)
            git_commit(project)
            projects[name] = project
    return projects


@pytest.fixture(scope="module")
def lane(baked, tmp_path_factory):
    """One namespace for the module: the root, the wheels on /wheels, the bakes in /root/git/<name>."""
    with timed(f"root ({SUITE}): build or reuse"):
        pristine = debian_root.build_root(SUITE)
    with timed(f"wheelhouse (Python {PYTHON}): download or reuse"):
        house = debian_root.wheelhouse(PYTHON, [project / "requirements.lock" for project in baked.values()])
    namespace = debian_root.Namespace(pristine, tmp_path_factory.mktemp("lane"), binds={WHEELS: house}, memory="4g")
    with timed("namespace start"):
        namespace.start()
    try:
        # App users' uids that no user of the machine has (see test_debian_lane.UID_RANGE).
        namespace.run(LOGIN_DEFS)
        for name, project in baked.items():
            namespace.copy_in(project, f"/root/git/{name}")
        yield namespace
    finally:
        namespace.stop()
        TIMES["namespace stop"] = sum(namespace.stop_seconds.values())
        print(f"\nDebian lane, roles and certbot ({SUITE}, Python {PYTHON}), seconds:")
        for label, seconds in TIMES.items():
            print(f"  {label:<60} {seconds:7.1f}")


def install(lane, checkout, label, env):
    """deploy/install.sh from the checkout as root, wheels only: exit 0.
    Returns (output, the lines that say FAILED or ERROR)."""
    with timed(f"install.sh ({label})"):
        result = lane.run(
            ["deploy/install.sh"], cwd=checkout, env={**PIP_ENV, "WHEELHOUSE": WHEELS, **env}, check=False, timeout=1200
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"install.sh ({label}) exited {result.returncode}\n{output}"
    return output, [f"install.sh ({label}): {line}" for line in output.splitlines() if FAILURE_LINE.search(line)]


def uninstall(lane, checkout, label, role, *args):
    """deploy/uninstall.sh as root: (exit code, output); the caller asserts once its own checks ran."""
    with timed(f"uninstall.sh ({label})"):
        result = lane.run(["deploy/uninstall.sh", *args], cwd=checkout, env={"ROLE": role}, check=False, timeout=300)
    return result.returncode, result.stdout + result.stderr


def env_lines(text):
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def redis_scan(lane, data_root, slug, address, port, pattern):
    """redis-cli over TLS (the data host's CA) as the app's ACL user: the keys matching `pattern`."""
    secrets = env_lines(lane.run(["cat", f"{data_root}/secrets.env"]).stdout)
    command = ["redis-cli", "-h", address, "-p", str(port), "--no-auth-warning", "--tls"]
    command += ["--cacert", f"{data_root}/tls/ca.pem", "--user", slug, "--scan", "--pattern", pattern]
    result = lane.run(command, env={"REDISCLI_AUTH": secrets["REDIS_APP_PASSWORD"]}, check=False)
    return (result.stdout + result.stderr).strip()


def session_cookie(lane, jar):
    for line in lane.run(["cat", jar]).stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 7 and fields[5] == "sessionid":
            return fields[6]
    return None


def nothing_left(lane, slug):
    """No /webapps/<slug>*, no supervisor program, no cluster, no process, no user of the slug."""
    webapps = lane.run("ls -A /webapps 2>/dev/null || true").stdout.split()
    assert [name for name in webapps if name.startswith(slug)] == [], f"/webapps: {webapps}"
    confs = lane.run(["ls", "-A", "/etc/supervisor/conf.d"]).stdout.split()
    assert confs == [], f"supervisor conf.d: {confs}"
    clusters = lane.run(["pg_lsclusters", "-h"]).stdout
    assert not re.search(rf"^\S+\s+{slug}\s", clusters, re.M), clusters
    enabled = lane.run(["ls", "-A", "/etc/nginx/sites-enabled"]).stdout.split()
    assert enabled == ["default"], f"sites-enabled: {enabled}"
    assert lane.run(["getent", "passwd", slug], check=False).returncode != 0, f"user {slug} is left"
    processes = [cmd for _, cmd in lane.processes() if slug in cmd]
    assert processes == [], f"processes of {slug} are left: {processes}"


def test_roles_data_then_app_login_in_remote_redis_and_uninstall(lane, baked):
    """ROLE=data on 127.0.0.4-6, ROLE=app pointed at it with the lines it printed:
    https /healthz, admin login (PostgreSQL over TLS), the session in the
    data host's sessions Redis (and its replica), then uninstall.sh of each
    role leaving nothing."""
    slug, domain = ROLES["project_slug"], ROLES["domain_name"]
    data_root = f"/webapps/{slug}-data"
    checkout = clone(lane, "roles", user=None)
    failures = []
    try:
        output, bad = install(lane, checkout, "ROLE=data", DATA_ENV)
        failures += bad
        lines = env_lines(lane.run(["cat", f"{data_root}/app.env"]).stdout)
        for name, value in lines.items():
            assert f"{name}={value}" in output, f"ROLE=data did not print {name}"
        assert "sslmode=verify-full" in lines["DATABASE_URL"], lines["DATABASE_URL"]
        clusters = lane.run(["pg_lsclusters", "-h"]).stdout
        assert re.search(rf"^\S+\s+{slug}\s+{DATA_ENV['POSTGRES_PORT']}\s+online", clusters, re.M), clusters

        _, bad = install(lane, checkout, "ROLE=app", {"ROLE": "app", **lines})
        failures += bad
        supervisor = lane.run(["cat", f"/etc/supervisor/conf.d/{slug}.conf"]).stdout
        assert "redis-server" not in supervisor, "ROLE=app runs a Redis of its own"
        browser = Browser(lane, f"https://{domain}", "/root/jar-roles", domain=domain)
        status, body, _ = browser.request("/healthz")
        assert status == 200, body[:500]
        # The app's database is the data host's cluster, over TLS, verified.
        ssl = lane.run(
            ["psql", lines["DATABASE_URL"], "-Atc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"]
        )
        assert ssl.stdout.strip() == "t", ssl.stdout + ssl.stderr
        create_admin(lane, slug)
        browser.login()
        session = session_cookie(lane, "/root/jar-roles")
        assert session, "no sessionid cookie after the login"
        keys = redis_scan(lane, data_root, slug, ADDRESS, SESSIONS_PORT, f"*{session}*")
        assert session in keys, f"the session is not in the data host's sessions Redis: {keys}"
        for _ in range(20):  # replicated asynchronously
            if session in redis_scan(lane, data_root, slug, REPLICA, REPLICA_PORT, f"*{session}*"):
                break
            time.sleep(0.1)
        assert session in redis_scan(lane, data_root, slug, REPLICA, REPLICA_PORT, f"*{session}*")
    finally:
        app_code, app_out = uninstall(lane, checkout, "ROLE=app", "app")
        data_code, data_out = uninstall(lane, checkout, "ROLE=data", "data")
    assert app_code == 0, app_out
    assert data_code == 0 and "dropped" in data_out, data_out
    nothing_left(lane, slug)
    assert not FAILURE_LINE.search(app_out + data_out), app_out + data_out
    assert failures == [], "successful installs printed:\n" + "\n".join(failures)


def start_pebble(lane, domain):
    """pebble + pebble-challtestsrv in the namespace (test_acme.Pebble's flags), the
    listener certificate made with openssl (the package ships none); then
    `domain` gets an A record 127.0.0.1 in challtestsrv, pebble's DNS (no
    other name resolves there)."""
    d = PEBBLE_DIR
    script = f"""
set -e
mkdir -p {d} && cd {d}
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pebble listener CA" \\
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \\
    -keyout listener-ca.key -out listener-ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout listener.key -out listener.csr 2>/dev/null
printf '%s\\n' subjectAltName=IP:127.0.0.1,DNS:localhost basicConstraints=CA:FALSE \\
    extendedKeyUsage=serverAuth >listener.ext
openssl x509 -req -in listener.csr -CA listener-ca.pem -CAkey listener-ca.key -CAcreateserial -days 2 \\
    -extfile listener.ext -out listener.pem 2>/dev/null
cat >pebble.json <<JSON
{{"pebble": {{"listenAddress": "127.0.0.1:{PEBBLE_PORT}", "managementListenAddress": "127.0.0.1:{PEBBLE_MANAGEMENT}",
 "certificate": "{d}/listener.pem", "privateKey": "{d}/listener.key", "httpPort": 80, "tlsPort": 443,
 "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}
JSON
setsid -f pebble-challtestsrv -defaultIPv4 "" -defaultIPv6 "" -dns01 127.0.0.1:{DNS_PORT} -http01 "" \\
    -https01 "" -tlsalpn01 "" -management 127.0.0.1:{DNS_MANAGEMENT} >challtestsrv.log 2>&1 </dev/null
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \\
    setsid -f pebble -config pebble.json -dnsserver 127.0.0.1:{DNS_PORT} >pebble.log 2>&1 </dev/null
for i in $(seq 150); do
    curl -sf --cacert listener-ca.pem -o /dev/null {ACME_SERVER} &&
        curl -sf -o /dev/null -X POST -d '{{"host": "{domain}", "addresses": ["127.0.0.1"]}}' \\
            http://127.0.0.1:{DNS_MANAGEMENT}/add-a && exit 0
    sleep 0.2
done
echo "pebble did not answer within 30 s"; tail -n 20 pebble.log challtestsrv.log; exit 1
"""
    lane.run(script)


def test_certbot_gets_a_pebble_certificate_and_nginx_serves_it(lane, baked):
    """install.sh with LETSENCRYPT_EMAIL against pebble in the namespace: certbot
    (the release's own) validates HTTP-01 on the site's port 80 for real, and
    port 443 then serves the certificate pebble issued, verified against
    pebble's root for the domain."""
    slug, domain = ACME["project_slug"], ACME["domain_name"]
    with timed("pebble start"):
        start_pebble(lane, domain)
    certbot = lane.run(["certbot", "--version"]).stdout.strip()
    checkout = clone(lane, "acme", user=None)
    try:
        env = {"LETSENCRYPT_EMAIL": EMAIL, "ACME_SERVER": ACME_SERVER, "ACME_CA_BUNDLE": PEBBLE_CA}
        output, failures = install(lane, checkout, f"LETSENCRYPT_EMAIL, {certbot}", env)
        issued = re.search(rf"certificate: /etc/letsencrypt/live/{re.escape(domain)}, issued in ([\d.]+) s", output)
        assert issued, output
        TIMES[f"issuance by {certbot} against pebble"] = float(issued.group(1))
        site = lane.run(["cat", f"/etc/nginx/sites-available/{slug}.conf"]).stdout
        assert f"ssl_certificate /etc/letsencrypt/live/{domain}/fullchain.pem;" in site
        root = f"{PEBBLE_DIR}/root.pem"
        lane.run(f"curl -sSf --cacert {PEBBLE_CA} https://127.0.0.1:{PEBBLE_MANAGEMENT}/roots/0 -o {root}")
        # Verified against pebble's root alone, for the domain: any other chain fails.
        s_client = lane.run(
            f"openssl s_client -connect 127.0.0.1:443 -servername {domain} -CAfile {root} "
            f"-verify_hostname {domain} -verify_return_error </dev/null 2>&1",
            check=False,
        )
        assert "Verify return code: 0 (ok)" in s_client.stdout, s_client.stdout[-3000:]
        served = lane.run(
            f"openssl s_client -connect 127.0.0.1:443 -servername {domain} </dev/null 2>/dev/null "
            "| openssl x509 -noout -serial -issuer"
        ).stdout
        live = lane.run(
            ["openssl", "x509", "-noout", "-serial", "-issuer", "-in", f"/etc/letsencrypt/live/{domain}/cert.pem"]
        )
        assert served == live.stdout and "Pebble" in served, f"served:\n{served}\nlive:\n{live.stdout}"
        status, body, _ = Browser(lane, f"https://{domain}", "/root/jar-acme", domain=domain).request("/healthz")
        assert status == 200, body[:500]
    finally:
        code, removed = uninstall(lane, checkout, "LETSENCRYPT_EMAIL site", "single")
    assert code == 0, removed
    nothing_left(lane, slug)
    assert not FAILURE_LINE.search(removed), removed
    assert failures == [], "the successful install printed:\n" + "\n".join(failures)
