"""A real certificate from a real ACME server, and the https site in a real browser.

Debian's pebble runs on loopback as the ACME server and validates HTTP-01 for
real: it fetches http://acme.socketstack.test/.well-known/acme-challenge/...
from the site's own nginx on port 80. pebble-challtestsrv is its DNS server
and answers for the test domain only once the test says so: the first
install.sh run (with LETSENCRYPT_EMAIL) finds no DNS record and must fail
cleanly, the second gets the certificate. PEBBLE_VA_ALWAYS_VALID is never set.

Root only, like test_deploy.py, and under the deploy lock. The tests stop the
pebble processes they started, uninstall the site, and delete the test
domain's certificate and pebble's account from /etc/letsencrypt.
"""

import http.client
import http.cookies
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from browser import Watch, chromium, log_in, logged_in, shot
from conftest import bake, free_port, require, run
from test_deploy import (
    INSTALL_ENV_DROP,
    Server,
    nginx_running,
    require_root,
    stop_daemons_started_since,
    supervisord_running,
)

DOMAIN = "acme.socketstack.test"  # test-only: never a real certificate
SLUG = "sst_acme"
EMAIL = "ops@example.com"
ADMIN_PASSWORD = "acme-test-" + "pw-8r4x" * 3
LETSENCRYPT = Path("/etc/letsencrypt")
SELF_SIGNED = Path("/etc/ssl/socketstack") / DOMAIN / "fullchain.pem"
# certbot refuses a hook whose first word is not on PATH: systemctl only where systemd runs.
HOOK = "systemctl reload nginx" if Path("/run/systemd/system").is_dir() else "nginx -s reload"


class Pebble:
    """pebble + pebble-challtestsrv on loopback, on free ports; stop() ends exactly these two."""

    def __init__(self, workdir, http_port=80, dns=None):
        self.workdir = workdir
        self.http_port = http_port  # where pebble fetches the HTTP-01 challenge
        self.port, self.management, self.dns, self.dns_management = (free_port() for _ in range(4))
        self.own_dns = dns is None  # else: another Pebble's challtestsrv port
        self.dns = dns or self.dns
        self.ca = workdir / "listener-ca.pem"
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.processes = []

    def start(self):
        openssl = require("openssl")
        w = self.workdir
        # pebble's own https listener needs a certificate: the package ships none.
        run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pebble listener CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
             "-keyout", w / "listener-ca.key", "-out", self.ca], w)  # fmt: skip
        run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", w / "listener.key", "-out", w / "listener.csr"], w)  # fmt: skip
        (w / "listener.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        )
        run([openssl, "x509", "-req", "-in", w / "listener.csr", "-CA", self.ca, "-CAkey", w / "listener-ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", w / "listener.ext",
             "-out", w / "listener.pem"], w)  # fmt: skip
        (w / "pebble.json").write_text(
            '{"pebble": {'
            f'"listenAddress": "127.0.0.1:{self.port}", "managementListenAddress": "127.0.0.1:{self.management}", '
            f'"certificate": "{w}/listener.pem", "privateKey": "{w}/listener.key", '
            f'"httpPort": {self.http_port}, "tlsPort": 443, '
            '"ocspResponderURL": "", "externalAccountBindingRequired": false}}\n'
        )
        # No answer for any name until add_a(): -defaultIPv4/IPv6 empty.
        if self.own_dns:
            self._spawn(
                "challtestsrv",
                [require("pebble-challtestsrv"), "-defaultIPv4", "", "-defaultIPv6", "",
                 "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                 "-management", f"127.0.0.1:{self.dns_management}"],
                {},
            )  # fmt: skip
        # No artificial sleeps, no random nonce rejections, a fresh validation for every order.
        self._spawn(
            "pebble",
            [require("pebble"), "-config", str(w / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns}"],
            {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.directory, verify=self.ca, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            for name, process in self.processes:
                assert process.poll() is None, f"{name} exited: {(self.workdir / f'{name}.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "pebble did not answer within 30 s"
            time.sleep(0.2)

    def _spawn(self, name, command, env):
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        log.close()
        self.processes.append((name, process))

    def add_a(self, host, address="127.0.0.1"):
        response = requests.post(
            f"http://127.0.0.1:{self.dns_management}/add-a", json={"host": host, "addresses": [address]}, timeout=5
        )
        assert response.status_code == 200, response.text

    def root(self):
        response = requests.get(f"https://127.0.0.1:{self.management}/roots/0", verify=self.ca, timeout=5)
        assert response.status_code == 200
        return response.text

    def stop(self):
        for _, process in self.processes:
            process.terminate()
        for _, process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


class Site(Server):
    """The installed server, installed with LETSENCRYPT_EMAIL and reached over TLS from Python."""

    def __init__(self, project, workdir, pebble):
        super().__init__(project, workdir, {"redis": "dedicated"}, domain=DOMAIN)
        self.pebble = pebble
        self.returncodes = {}

    def install(self, label, pebble=None):
        pebble = pebble or self.pebble
        drop = (*INSTALL_ENV_DROP, "LETSENCRYPT_EMAIL", "ACME_SERVER", "ACME_CA_BUNDLE")
        env = {key: value for key, value in os.environ.items() if key not in drop}
        env.update(LETSENCRYPT_EMAIL=EMAIL, ACME_SERVER=pebble.directory, ACME_CA_BUNDLE=str(pebble.ca))
        result = self.run_install_sh(label, env)
        self.returncodes[label] = result.returncode
        (self.workdir / f"install-{label.replace(' ', '-')}.log").write_text(self.outputs[label])  # an artefact
        print(f"install.sh ({label}): {self.timings[label]:.1f} s, exit {result.returncode}")
        return result

    def connect(self, cadata=None):
        """A TLS socket to 127.0.0.1:443 with SNI for DOMAIN; verified against cadata when given."""
        if cadata:
            context = ssl.create_default_context(cadata=cadata)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=10), server_hostname=DOMAIN)

    def served_der(self):
        with self.connect() as sock:
            return sock.getpeercert(binary_form=True)

    def request(self, method, path, cadata, headers=None, body=None):
        """One request on a new TLS connection: (status, headers, body, the served certificate's serial)."""
        site = self

        class Connection(http.client.HTTPSConnection):
            def connect(self):
                self.sock = site.connect(cadata)

        connection = Connection(DOMAIN, 443, timeout=10)
        try:
            connection.connect()
            serial = connection.sock.getpeercert()["serialNumber"]  # before a "Connection: close" drops sock
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
            return response.status, response.headers, text, serial
        finally:
            connection.close()


def file_serial(path):
    out = subprocess.run(["openssl", "x509", "-serial", "-noout", "-in", str(path)], capture_output=True, text=True)
    return out.stdout.strip().split("=", 1)[1].upper()


def certbot_files():
    """certbot's numbered copies of keys and CSRs (certonly writes them for every issuance)."""
    return {path for kind in ("keys", "csr") for path in (LETSENCRYPT / kind).glob("*.pem")}


def forget_test_certificate(pebble_port=None, keep=None):
    """Remove the test domain's certificate, pebble's account and the test's key copies from /etc/letsencrypt."""
    if shutil.which("certbot") and (LETSENCRYPT / "renewal" / f"{DOMAIN}.conf").exists():
        subprocess.run(["certbot", "delete", "--non-interactive", "--cert-name", DOMAIN], capture_output=True)
    for path in (LETSENCRYPT / "live" / DOMAIN, LETSENCRYPT / "archive" / DOMAIN):
        shutil.rmtree(path, ignore_errors=True)
    (LETSENCRYPT / "renewal" / f"{DOMAIN}.conf").unlink(missing_ok=True)
    if pebble_port:
        shutil.rmtree(LETSENCRYPT / "accounts" / f"127.0.0.1:{pebble_port}", ignore_errors=True)
    if keep is not None:
        for path in certbot_files() - keep:
            path.unlink()


@pytest.fixture(scope="module")
def acme(cookies_session, tmp_path_factory):
    """Install with no DNS record (fails cleanly), then with one (issued); clean everything up."""
    require_root()
    require("curl")
    require("certbot")
    require("pebble")
    require("pebble-challtestsrv")
    if Path(f"/webapps/{SLUG}").exists() or Path(f"/etc/supervisor/conf.d/{SLUG}.conf").exists():
        pytest.fail(f"/webapps/{SLUG} or its supervisor program exists already: run its deploy/uninstall.sh first")
    forget_test_certificate()  # a leftover of an interrupted run, for this test-only domain
    nginx_before, supervisord_before = nginx_running(), supervisord_running()
    certbot_before = certbot_files()
    pebble = Pebble(tmp_path_factory.mktemp("pebble"))
    project = bake(cookies_session, project_slug=SLUG, domain_name=DOMAIN)
    site = Site(project, tmp_path_factory.mktemp("acme"), pebble)
    try:
        pebble.start()
        site.install("no DNS")
        # Right after the failed issuance: still up, on the self-signed certificate.
        site.after_failure = {
            "healthz": site.request("GET", "/healthz", SELF_SIGNED.read_text())[0],
            "served": site.served_der(),
        }
        pebble.add_a(DOMAIN)
        site.install("issued")
        assert site.returncodes["issued"] == 0, site.outputs["issued"]
        yield site
    finally:
        if site.installed():
            site.uninstall()
        forget_test_certificate(pebble.port, keep=certbot_before)
        pebble.stop()
        stop_daemons_started_since(nginx_before, supervisord_before)
        assert not (LETSENCRYPT / "live" / DOMAIN).exists()
        assert not Path("/var/lib/socketstack").exists(), "install.sh left state that uninstall.sh did not remove"
        assert all(process.poll() is not None for _, process in pebble.processes)


def test_domain_not_resolving_here_fails_cleanly_and_site_stays_up(acme):
    output = acme.outputs["no DNS"]
    assert acme.returncodes["no DNS"] == 1
    errors = [line for line in output.splitlines() if line.startswith("install.sh: ")]
    first = next(i for i, line in enumerate(errors) if "ERROR" in line)
    assert errors[first].startswith(f"install.sh: ERROR: certbot could not get a certificate for {DOMAIN}: "), errors
    assert re.search(r"dns|resolve|NXDOMAIN", errors[first], re.IGNORECASE), errors[first]  # certbot's reason
    assert errors[first + 1].startswith("install.sh: what to do: DNS does not point here"), errors
    assert f"dig +short {DOMAIN}" in errors[first + 1]
    assert errors[-1].startswith(
        f"install.sh: FAILED to get a certificate for {DOMAIN} (the site is up on {SELF_SIGNED})"
    )
    assert "Traceback" not in output
    # The site answered over https on the certificate it had.
    assert acme.after_failure["healthz"] == 200
    assert acme.after_failure["served"] == ssl.PEM_cert_to_DER_cert(SELF_SIGNED.read_text())


def test_issued_certificate_is_served_and_chains_to_pebble_root(acme):
    output = acme.outputs["issued"]
    issued = re.search(r"certificate: /etc/letsencrypt/live/\S+, issued in ([\d.]+) s", output)
    assert issued, output
    print(f"issuance against pebble: {issued.group(1)} s (install.sh run: {acme.timings['issued']:.1f} s)")
    assert "install.sh: still on a self-signed certificate" not in output
    site_conf = Path(f"/etc/nginx/sites-available/{SLUG}.conf").read_text()
    assert f"ssl_certificate /etc/letsencrypt/live/{DOMAIN}/fullchain.pem;" in site_conf
    # Verified against pebble's root alone (fails for any other chain), for DOMAIN.
    with acme.connect(cadata=acme.pebble.root()) as sock:
        cert = sock.getpeercert()
    assert ("commonName", "Pebble Root CA") not in [pair for rdn in cert["issuer"] for pair in rdn]  # an intermediate
    assert ("DNS", DOMAIN) in cert["subjectAltName"]
    assert cert["serialNumber"] == file_serial(LETSENCRYPT / "live" / DOMAIN / "cert.pem")


def test_renewal_is_wired_with_a_hook_that_only_reloads_nginx(acme):
    renewal = (LETSENCRYPT / "renewal" / f"{DOMAIN}.conf").read_text()
    assert f"renew_hook = {HOOK}\n" in renewal
    assert f"server = {acme.pebble.directory}\n" in renewal
    if Path("/run/systemd/system").is_dir():
        enabled = subprocess.run(["systemctl", "is-enabled", "certbot.timer"], capture_output=True, text=True)
        assert enabled.stdout.strip() == "enabled"
    else:
        assert "certbot -q renew" in Path("/etc/cron.d/certbot").read_text()
    assert "renewal: " in acme.outputs["issued"]


def test_second_run_keeps_the_certificate(acme):
    before = file_serial(LETSENCRYPT / "live" / DOMAIN / "cert.pem")
    result = acme.install("second run")
    assert result.returncode == 0, acme.outputs["second run"]
    assert f"certificate exists: /etc/letsencrypt/live/{DOMAIN}" in acme.outputs["second run"]
    assert file_serial(LETSENCRYPT / "live" / DOMAIN / "cert.pem") == before


def test_port_80_unreachable_fails_cleanly_on_the_certificate_it_had(acme, tmp_path):
    """Another ACME server whose validation cannot reach port 80: the real certificate stays in place."""
    closed_port = free_port()  # nothing listens there: the CA's fetch is refused, as behind a firewall
    blocked = Pebble(tmp_path, http_port=closed_port, dns=acme.pebble.dns)
    live = LETSENCRYPT / "live" / DOMAIN / "cert.pem"
    before = file_serial(live)
    try:
        blocked.start()
        result = acme.install("port 80 blocked", pebble=blocked)
    finally:
        blocked.stop()
        shutil.rmtree(LETSENCRYPT / "accounts" / f"127.0.0.1:{blocked.port}", ignore_errors=True)
    output = acme.outputs["port 80 blocked"]
    assert result.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("install.sh: ")]
    first = next(i for i, line in enumerate(errors) if "ERROR" in line)
    assert errors[first].startswith(f"install.sh: ERROR: certbot could not get a certificate for {DOMAIN}: "), errors
    assert re.search(r"connection|refused", errors[first], re.IGNORECASE), errors[first]
    assert errors[first + 1].startswith("install.sh: what to do: the CA could not reach port 80"), errors
    # Still the certificate from the first CA, served, and the site answers.
    assert file_serial(live) == before
    status, _, _, serial = acme.request("GET", "/healthz", acme.pebble.root())
    assert (status, serial) == (200, before)
    assert f"server = {acme.pebble.directory}\n" in (LETSENCRYPT / "renewal" / f"{DOMAIN}.conf").read_text()


def cookie_header(headers):
    jar = http.cookies.SimpleCookie()
    for value in headers.get_all("Set-Cookie") or []:
        jar.load(value)
    return {name: morsel.value for name, morsel in jar.items()}


def test_forced_renewal_under_load_drops_nothing_and_serves_a_new_serial(acme):
    root = acme.pebble.root()
    acme.create_admin(password=ADMIN_PASSWORD)
    status, headers, form, old_serial = acme.request("GET", "/admin/login/?next=/admin/", root)
    assert status == 200
    csrf = cookie_header(headers)["csrftoken"]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    body = urlencode({"csrfmiddlewaretoken": token, "username": "admin", "password": ADMIN_PASSWORD, "next": "/admin/"})
    status, headers, _, _ = acme.request("POST", "/admin/login/?next=/admin/", root, body=body, headers={
        "Cookie": f"csrftoken={csrf}", "Referer": f"https://{DOMAIN}/admin/login/",
        "Content-Type": "application/x-www-form-urlencoded",
    })  # fmt: skip
    assert status == 302
    cookie = f"sessionid={cookie_header(headers)['sessionid']}"

    results, failures, stop = [], [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                status, _, text, serial = acme.request("GET", "/admin/", root, headers={"Cookie": cookie})
            except Exception as error:  # noqa: BLE001 (every failure counts, none may end the thread)
                failures.append(repr(error))
                continue
            if status != 200 or "Log out" not in text:
                failures.append(f"HTTP {status}, logged in: {'Log out' in text}")
            results.append(serial)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        renew = subprocess.run(
            ["certbot", "renew", "--force-renewal", "--cert-name", DOMAIN, "--no-random-sleep-on-renew"],
            env={**os.environ, "REQUESTS_CA_BUNDLE": str(acme.pebble.ca)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        renewal_seconds = time.monotonic() - started
        assert renew.returncode == 0, renew.stdout + renew.stderr
        new_serial = file_serial(LETSENCRYPT / "live" / DOMAIN / "cert.pem")
        deadline = time.monotonic() + 15
        while new_serial not in results[-20:] and time.monotonic() < deadline:
            time.sleep(0.1)
        served_new = time.monotonic() - started
        time.sleep(1)
        alive = [thread.is_alive() for thread in threads]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    print(
        f"certbot renew --force-renewal: {renewal_seconds:.1f} s; new serial served after {served_new:.1f} s; "
        f"{len(results)} requests, {len(failures)} failed"
    )
    assert all(alive), "a load thread stopped early"
    assert new_serial != old_serial
    assert results[-1] == new_serial, "nginx still serves the old certificate"
    assert failures == [], failures[:5]
    assert old_serial in results and len(results) > 20


def trusting_home(tmp_path, root_pem):
    """A HOME whose NSS database (Chromium's trust store on Linux) trusts pebble's root."""
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    (tmp_path / "pebble-root.pem").write_text(root_pem)
    certutil = require("certutil")
    run([certutil, "-d", f"sql:{nssdb}", "-N", "--empty-password"], tmp_path)
    run([certutil, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "pebble-root", "-i", tmp_path / "pebble-root.pem"],
        tmp_path)  # fmt: skip
    return home


def test_browser_over_https_login_cookies_console_and_hsts(acme, tmp_path):
    """Chromium trusts pebble's root (no certificate-error flags), logs in, checks cookies, console, HSTS."""
    home = trusting_home(tmp_path, acme.pebble.root())
    base = f"https://{DOMAIN}"
    acme.create_admin("browser", ADMIN_PASSWORD)
    with chromium(home, resolve=DOMAIN, extra_args=["--disable-features=HttpsUpgrades"]) as browser:
        context = browser.new_context()
        page = context.new_page()
        watch = Watch(page)
        response = page.goto(base + "/")
        # No certificate error: Chromium trusts the chain through its NSS database.
        assert response.status == 200 and "Pebble" in response.security_details()["issuer"]
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
        shot(page, tmp_path, "https-home")
        page.goto(base + "/admin/login/")
        shot(page, tmp_path, "https-login")
        log_in(page, base, "browser", ADMIN_PASSWORD)
        assert logged_in(page)
        shot(page, tmp_path, "https-admin")
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["sessionid"]["secure"] and cookies["sessionid"]["httpOnly"]
        # Django leaves the CSRF cookie readable by scripts (CSRF_COOKIE_HTTPONLY is off): Secure is what counts.
        assert cookies["csrftoken"]["secure"]
        assert watch.problems == [], watch.problems
        # HSTS: the browser itself turns http:// into https:// (307, "HSTS"), before nginx's 301.
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        redirects = []
        cdp.on(
            "Network.requestWillBeSent",
            lambda event: redirects.append(event["redirectResponse"]) if "redirectResponse" in event else None,
        )
        page.goto(f"http://{DOMAIN}/admin/")
        assert page.url == base + "/admin/" and logged_in(page)
        first = redirects[0]
        assert first["url"] == f"http://{DOMAIN}/admin/" and first["status"] == 307, redirects
        assert first["headers"].get("Non-Authoritative-Reason") == "HSTS", first["headers"]
        shot(page, tmp_path, "https-admin-via-hsts")
        context.close()


# certbot's failures as Let's Encrypt words them: reason in one line, and the fix ----------

CERTBOT_FAILURES = {
    "dns": (
        "Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported"
        " these problems:\n  Domain: www.example.org\n  Type:   dns\n  Detail: DNS problem: NXDOMAIN looking up A"
        " for www.example.org - check that a DNS record exists for this domain\n\nHint: The Certificate Authority"
        " failed to download the temporary challenge files created by Certbot.\n\nSome challenges have failed.\n"
        "Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile"
        " /var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details.\n",
        "DNS does not point here",
    ),
    "port 80": (
        "Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported"
        " these problems:\n  Domain: www.example.org\n  Type:   connection\n  Detail: 203.0.113.7: Fetching"
        " http://www.example.org/.well-known/acme-challenge/abc: Timeout during connect (likely firewall problem)\n"
        "\nSome challenges have failed.\n",
        "the CA could not reach port 80",
    ),
    "rate limit": (
        "Saving debug log to /var/log/letsencrypt/letsencrypt.log\nRequesting a certificate for www.example.org\n"
        "An unexpected error occurred:\nError creating new order :: too many certificates (5) already issued for"
        " this exact set of domains in the last 168h0m0s, retry after 2026-01-02 03:04:05 UTC: see"
        " https://letsencrypt.org/docs/rate-limits/\nAsk for help or search for solutions at"
        " https://community.letsencrypt.org. See the logfile /var/log/letsencrypt/letsencrypt.log or re-run"
        " Certbot with -v for more details.\n",
        "the CA's rate limit was hit",
    ),
    "other host": (
        "  Domain: www.example.org\n  Type:   unauthorized\n  Detail: 198.51.100.9: Invalid response from"
        " http://www.example.org/.well-known/acme-challenge/abc: 404\n",
        "another machine answered for",
    ),
}


@pytest.mark.parametrize("case", sorted(CERTBOT_FAILURES))
def test_certbot_failure_gives_one_line_reason_and_the_fix(cookies_session, tmp_path, case):
    """install.sh's acme_reason and acme_fix, run by bash on certbot's own wording."""
    text, fix = CERTBOT_FAILURES[case]
    project = bake(cookies_session, domain_name="www.example.org")
    script = (project / "deploy" / "install.sh").read_text()
    functions = "\n".join(re.findall(r"^(acme_(?:reason|fix)\(\) \{.*?^\})", script, re.MULTILINE | re.DOTALL))
    (tmp_path / "certbot.log").write_text(text)
    result = run(
        ["bash", "-c", f'DOMAIN=www.example.org\n{functions}\nr="$(acme_reason "$1")"; echo "$r"; acme_fix "$r"',
         "-", tmp_path / "certbot.log"], tmp_path,
    )  # fmt: skip
    reason, advice = result.stdout.splitlines()
    assert len(reason) <= 400 and "community.letsencrypt.org" not in reason
    assert {"dns": "NXDOMAIN", "port 80": "Timeout during connect", "rate limit": "too many certificates",
            "other host": "Invalid response"}[case] in reason  # fmt: skip
    assert advice.startswith(fix), advice
