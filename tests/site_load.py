"""HTTPS requests to installed sites from inside a network namespace.

Run with the tooling's Python under `nsenter --net=...`: the sites' nginx
listens on that namespace's loopback only. Standard library only.

    python site_load.py login DOMAIN CAFILE USERNAME PASSWORD
        logs in through the admin's form; prints the session cookie's value
    python site_load.py load STOP_FILE RATE DOMAIN,CAFILE,SESSIONID ...
        GETs /admin/ on every site, RATE times a second each, until STOP_FILE
        exists; then prints one JSON list of [site, monotonic time, status]
        (status 0: no HTTP answer at all)

A logged-in GET /admin/ answers 200; 302 means the session was lost; 50x is
nginx's error page (gunicorn, Redis or PostgreSQL not answering).
"""

import http.client
import json
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

TIMEOUT = 5


class SiteConnection(http.client.HTTPSConnection):
    """https://DOMAIN/ on 127.0.0.1:443, SNI and certificate checked for DOMAIN."""

    def __init__(self, domain, cafile):
        super().__init__(domain, 443, timeout=TIMEOUT, context=ssl.create_default_context(cafile=cafile))

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", 443), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def request(domain, cafile, method, path, headers=None, body=None):
    """(status, headers, body) of one request on a new connection."""
    connection = SiteConnection(domain, cafile)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read().decode(errors="replace")
    finally:
        connection.close()


def cookies_of(headers):
    return dict(re.match(r"([^=]+)=([^;]*)", v).groups() for k, v in headers if k.lower() == "set-cookie")


def login(domain, cafile, username, password):
    """The session cookie of a login through the admin's form, as a browser does it."""
    from urllib.parse import urlencode

    status, headers, form = request(domain, cafile, "GET", "/admin/login/?next=/admin/")
    assert status == 200, f"GET /admin/login/ on {domain}: {status}"
    csrf = cookies_of(headers)["csrftoken"]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    body = urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"})
    status, headers, _ = request(
        domain, cafile, "POST", "/admin/login/?next=/admin/", body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf}",
                 "Referer": f"https://{domain}/admin/login/"},
    )  # fmt: skip
    assert status == 302, f"POST /admin/login/ on {domain}: {status}"
    return cookies_of(headers)["sessionid"]


def probe(domain, cafile, sessionid):
    """Status of GET /admin/ with the session (0: no HTTP answer)."""
    try:
        status, _, _ = request(domain, cafile, "GET", "/admin/", headers={"Cookie": f"sessionid={sessionid}"})
    except (OSError, http.client.HTTPException):
        return 0
    return status


def load(stop_file, rate, sites):
    """GET /admin/ on every site at `rate` per second each, until stop_file exists."""
    results = []
    lock = threading.Lock()

    def one_site(domain, cafile, sessionid):
        next_at = time.monotonic()
        while not Path(stop_file).exists():
            status = probe(domain, cafile, sessionid)
            with lock:
                results.append([domain, time.monotonic(), status])
            # A bounded rate: a failing site is not hammered faster than a healthy one.
            next_at = max(next_at + 1 / rate, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=one_site, args=site.split(",")) for site in sites]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def main(argv):
    if argv[0] == "login":
        print(login(*argv[1:5]))
    elif argv[0] == "load":
        print(json.dumps(load(argv[1], float(argv[2]), argv[3:])))
    else:
        sys.exit(f"site_load.py: unknown command {argv[0]!r}: use login or load")


if __name__ == "__main__":
    main(sys.argv[1:])
