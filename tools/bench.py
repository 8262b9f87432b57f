"""Measure a baked project's stack through nginx with wrk, as ratios to nginx's own rate.

    .venv/bin/python tools/bench.py [--compare all]               # bakes a default project first
    .venv/bin/python tools/bench.py --project /path/to/my_site    # a baked project with its .venv
    .venv/bin/python tools/bench.py --postgres                    # also PostgreSQL: vs SQLite, socket vs TCP, pooling

It measures the template's choices (workers, session stores, Redis over a
socket or TCP, Redis client options, nginx's page cache); docs/performance.md
holds the tables and what they mean. Absolute rates depend on the machine and
on whatever else runs on it, so every row is also given as a ratio to the rate
at which the same nginx serves a static file in the same round, and each
figure is the median of several rounds. What it runs, and stops again:

- the project's local stack (`make up`) when it is not running: its Redis
  instances, the database, migrations and collectstatic;
- its own gunicorn on run/bench-gunicorn.sock, with settings that add the
  /bench/ endpoints (views written to the project's var/bench/, never into its
  code), restarted for each variant;
- its own nginx on a free 127.0.0.1 port, with the project's nginx config
  (deploy/nginx/) pointed at that gunicorn;
- for `--compare redis`, a throwaway redis-server listening on a unix socket
  and on 127.0.0.1 at once;
- for `--postgres` (which bakes with database=postgresql into var/bench-postgres/),
  a throwaway PostgreSQL cluster on a unix socket and on 127.0.0.1 at once, and
  one gunicorn per PostgreSQL variant on its own 127.0.0.1 port, all at once;
- for `--compare redis-remote`, a throwaway redis-server on a unix socket,
  on 127.0.0.2 over TCP and over TLS (a CA made with openssl for the run),
  and three redis-sentinel processes (127.0.0.2, 127.0.0.3) watching it.

Nothing is installed; without wrk it says how to get it. Results: a table on
stdout, a JSON file (the project's var/bench/latest.json unless --json is
given) and the same tables in Markdown next to it, for docs/performance.md.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent
# Set by use_project(): the baked project measured and its deploy/local_stack.py.
local_stack = ROOT = SLUG = RUN = WORK = LOGS = GUNICORN_SOCKET = REDIS_SOCKET = None
CPUS = os.cpu_count() or 1
WRK_THREADS = 2
WRK_CONNECTIONS = 16
# nginx's page cache lets requests with an Authorization header through to
# Django, which ignores the header: a pure cache_page hit. (A made-up session
# cookie would also bypass nginx, but Django would then look the session up
# and delete the cookie.)
BYPASS_HEADER = "Authorization: Bearer bench-bypasses-the-page-cache"

# The views behind the /bench/ rows, added by the bench's own URLconf only.
BENCH_VIEWS = """from django.http import HttpResponse


def plain(request):
    # An anonymous page that Django renders every time: no session, no cache.
    return HttpResponse("plain\\n", content_type="text/plain")


def session_write(request):
    # Load the session named by the cookie, change it, save it.
    request.session["hits"] = request.session.get("hits", 0) + 1
    return HttpResponse("written\\n", content_type="text/plain")


def session_read(request):
    # Load the session named by the cookie; nothing is saved.
    return HttpResponse(f"hits={request.session.get('hits', 0)}\\n", content_type="text/plain")


def orm_read(request):
    # One small ORM query (20 rows that every migrated database has), no session.
    from django.contrib.auth.models import Permission

    names = Permission.objects.order_by("id").values_list("codename", flat=True)[:20]
    return HttpResponse("\\n".join(names), content_type="text/plain")
"""
BENCH_URLS = """from django.urls import path

import bench_views
from {slug}.urls import *  # noqa: F403
from {slug}.urls import urlpatterns

urlpatterns = [
    *urlpatterns,
    path("bench/plain", bench_views.plain),
    path("bench/session-write", bench_views.session_write),
    path("bench/session-read", bench_views.session_read),
    path("bench/orm-read", bench_views.orm_read),
]
"""

# name: (path, request header, what it measures). "session" stands for the
# cookie of a session that the bench creates before measuring.
ROWS = {
    "static": ("STATIC", None, "a static file, about the size of the home page, from nginx (the ceiling)"),
    "healthz": ("/healthz", None, "/healthz: one query and two Redis PINGs, never cached"),
    "home": ("/", None, "the home page as an anonymous visitor gets it (nginx's page cache when on)"),
    "home-django": ("/", BYPASS_HEADER, "the home page from Django's cache_page (Redis), nginx cache bypassed"),
    "plain": ("/bench/plain", None, "an anonymous Django view, no session, no cache"),
    "session-write": ("/bench/session-write", "session", "load, change and save a session"),
    "session-read": ("/bench/session-read", "session", "load a session"),
    "orm-read": ("/bench/orm-read", None, "one ORM query of 20 rows, no session (--postgres)"),
}
DJANGO_ROWS = ["plain", "home-django", "session-write", "session-read"]


def variant(name, rows=None, env=None, settings=(), args=(), note=""):
    """One configuration to measure: gunicorn env and arguments, settings lines, rows."""
    return {
        "name": name,
        "rows": rows or [row for row in ROWS if row != "orm-read"],
        "env": env or {},
        "settings": list(settings),
        "args": list(args),
        "note": note,
    }


def engine(name):
    return f"SESSION_ENGINE = 'django.contrib.sessions.backends.{name}'"


def redis_urls(cache, sessions):
    return [f"CACHES['default']['LOCATION'] = '{cache}'", f"CACHES['sessions']['LOCATION'] = '{sessions}'"]


def comparisons(tcp_port):
    """The variants each --compare group runs."""
    socket_url = f"unix://{REDIS_SOCKET}?db="
    tcp_url = f"redis://127.0.0.1:{tcp_port}/"
    sweep = [
        variant(f"sync-{n}", ["plain", "session-write"], {"GUNICORN_WORKERS": str(n)})
        for n in sorted({CPUS, CPUS + 1, 2 * CPUS, 2 * CPUS + 1})
    ]
    for workers, threads in ((CPUS, 4), (CPUS + 1, 2), (1, 8)):
        env = {"GUNICORN_WORKERS": str(workers), "GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": str(threads)}
        sweep.append(variant(f"gthread-{workers}x{threads}", ["plain", "session-write"], env))
    recycling = [
        variant(
            f"max-requests-{n}",
            ["plain", "session-write"],
            args=["--max-requests", str(n), "--max-requests-jitter", str(n // 10)],
            note="never recycle workers" if n == 0 else f"recycle each worker after about {n} requests",
        )
        for n in (0, 2000, 20000)
    ]
    redis_rows = ["healthz", "home-django", "session-write", "session-read"]
    remote = remote_redis_variants(REMOTE or {})
    return {
        "workers": sweep,
        "recycling": recycling,
        "sessions": [
            variant(f"sessions-{name}", ["plain", "session-write", "session-read"], settings=[engine(name)])
            for name in ("cache", "cached_db", "db")
        ],
        "redis": [
            variant(
                "redis-socket",
                redis_rows,
                settings=redis_urls(socket_url + "0", socket_url + "1"),
                note="a throwaway redis-server, through its unix socket",
            ),
            variant(
                "redis-tcp",
                redis_rows,
                settings=redis_urls(tcp_url + "0", tcp_url + "1"),
                note="the same redis-server, through 127.0.0.1",
            ),
        ],
        "redis-options": [
            variant("options-default", redis_rows[1:], note="the generated settings"),
            variant(
                "no-hiredis",
                redis_rows[1:],
                settings=[
                    "from redis._parsers import _RESP3Parser",
                    "for alias in CACHES:",
                    "    CACHES[alias]['OPTIONS']['CONNECTION_POOL_KWARGS'] = {'parser_class': _RESP3Parser}",
                ],
                note="redis-py's pure-Python parser instead of hiredis",
            ),
            variant(
                "zlib",
                redis_rows[1:],
                settings=[
                    "for alias in CACHES:",
                    "    CACHES[alias]['OPTIONS']['COMPRESSOR'] = 'django_redis.compressors.zlib.ZlibCompressor'",
                ],
                note="django-redis's zlib compressor on both aliases",
            ),
            variant(
                "no-timeouts",
                redis_rows[1:],
                settings=[
                    "for alias in CACHES:",
                    "    CACHES[alias]['OPTIONS'].pop('SOCKET_TIMEOUT')",
                    "    CACHES[alias]['OPTIONS'].pop('SOCKET_CONNECT_TIMEOUT')",
                ],
                note="no SOCKET_TIMEOUT / SOCKET_CONNECT_TIMEOUT",
            ),
            variant(
                "pool-4",
                redis_rows[1:],
                settings=[
                    "for alias in CACHES:",
                    "    CACHES[alias]['OPTIONS']['CONNECTION_POOL_KWARGS'] = {'max_connections': 4}",
                ],
                note="connection pool capped at 4 per worker",
            ),
        ],
        "redis-remote": remote,
    }


# Redis off the box (--compare redis-remote): the same redis-server reached
# four ways, through the generated settings' own variables (REDIS_*_URL,
# REDIS_TLS_CA_FILE, REDIS_*_SENTINELS), not through settings lines.
REMOTE = None
REMOTE_HOSTS = ("127.0.0.2", "127.0.0.3")
REMOTE_ROWS = ["plain", "session-write", "session-read"]


def remote_redis_variants(remote):
    if not remote:
        return [variant(f"remote-{name}", REMOTE_ROWS) for name in ("socket", "tcp", "tls", "sentinel")]
    host = REMOTE_HOSTS[0]
    sentinels = ",".join(f"{h}:{p}" for h, p in remote["sentinels"])
    urls = {
        "socket": {
            "REDIS_CACHE_URL": f"unix://{remote_socket()}?db=0",
            "REDIS_SESSIONS_URL": f"unix://{remote_socket()}?db=1",
        },
        "tcp": {
            "REDIS_CACHE_URL": f"redis://{host}:{remote['port']}/0",
            "REDIS_SESSIONS_URL": f"redis://{host}:{remote['port']}/1",
        },
        "tls": {
            "REDIS_CACHE_URL": f"rediss://{host}:{remote['tls_port']}/0",
            "REDIS_SESSIONS_URL": f"rediss://{host}:{remote['tls_port']}/1",
            "REDIS_TLS_CA_FILE": str(remote["ca"]),
        },
        "sentinel": {
            "REDIS_CACHE_URL": "redis:///0",
            "REDIS_SESSIONS_URL": "redis:///1",
            "REDIS_CACHE_SENTINELS": sentinels,
            "REDIS_CACHE_SENTINEL_SERVICE": "bench",
            "REDIS_SESSIONS_SENTINELS": sentinels,
            "REDIS_SESSIONS_SENTINEL_SERVICE": "bench",
        },
    }
    notes = {
        "socket": "a throwaway redis-server through its unix socket (today's default)",
        "tcp": f"the same redis-server over TCP on {host}",
        "tls": f"the same redis-server over TLS on {host} (rediss://, verified against a CA made for the run)",
        "sentinel": "the same redis-server found through three sentinels (SentinelClient), TCP",
    }
    return [variant(f"remote-{name}", REMOTE_ROWS, env=urls[name], note=notes[name]) for name in urls]


def free_port_on(host):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_remote_redis():
    """redis-server on REDIS_SOCKET, TCP and TLS on 127.0.0.2, and three sentinels: (processes, info)."""
    redis_server = shutil.which("redis-server", path=local_stack.SYSTEM_PATH)
    openssl = shutil.which("openssl")
    if not redis_server or not openssl:
        raise RuntimeError("redis-server and openssl are needed (sudo apt-get install redis-server openssl)")
    directory = WORK / "remote-redis"
    directory.mkdir(parents=True, exist_ok=True)
    host = REMOTE_HOSTS[0]
    ca, key, cert = directory / "ca.pem", directory / "server.key", directory / "server.pem"
    quiet = {"check": True, "capture_output": True, "cwd": directory}
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bench-ca",
                    "-keyout", "ca.key", "-out", ca], **quiet)  # fmt: skip
    subprocess.run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=redis", "-keyout", key,
                    "-out", "server.csr"], **quiet)  # fmt: skip
    (directory / "san.cnf").write_text(f"subjectAltName=IP:{host}\n")
    subprocess.run([openssl, "x509", "-req", "-in", "server.csr", "-CA", ca, "-CAkey", "ca.key", "-CAcreateserial",
                    "-days", "1", "-extfile", "san.cnf", "-out", cert], **quiet)  # fmt: skip
    port, tls_port = free_port_on(host), free_port_on(host)
    remote_socket().unlink(missing_ok=True)
    processes = []
    try:
        command = [
            *(redis_server, "--port", port, "--bind", host, "--dir", directory, "--save", "", "--appendonly", "no"),
            *("--unixsocket", remote_socket(), "--unixsocketperm", "700", "--tls-port", tls_port),
            *("--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"),
        ]
        processes.append(start([str(c) for c in command], "bench-remote-redis.log"))
        wait_until(lambda: redis_connections() is not None, processes[0], "bench redis-server (remote)")
        sentinels = []
        for index, sentinel_host in enumerate((REMOTE_HOSTS[0], REMOTE_HOSTS[1], REMOTE_HOSTS[0])):
            sentinel_port = free_port_on(sentinel_host)
            conf = directory / f"sentinel-{index}.conf"
            conf.write_text(f"sentinel announce-ip {sentinel_host}\nsentinel monitor bench {host} {port} 2\n")
            command = [redis_server, conf, "--sentinel", "--port", sentinel_port, "--bind", sentinel_host,
                       "--dir", directory]  # fmt: skip
            processes.append(start([str(c) for c in command], f"bench-sentinel-{index}.log"))
            sentinels.append((sentinel_host, sentinel_port))
            wait_until(lambda a=sentinels[-1]: tcp_open(*a), processes[-1], "bench sentinel")
    except BaseException:
        for process in processes:
            stop(process)
        raise
    return processes, {"port": port, "tls_port": tls_port, "ca": ca, "sentinels": sentinels, "host": host}


def tcp_open(host, port):
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def remote_socket():
    return RUN / "bench-remote-redis.sock"


def redis_client():
    """One connection to the remote variants' redis-server, over its unix socket, for the counts."""
    import redis

    return redis.Redis(unix_socket_path=str(remote_socket()), socket_timeout=2)


def redis_connections(client=None):
    """(app connections, total_connections_received) of the remote variants' redis-server, or None.

    App connections: CLIENT LIST without the sentinels' own (named sentinel-...)
    and without the one asking.
    """
    import redis

    try:
        probe = client or redis_client()
        own = probe.client_id()
        clients = [c for c in probe.client_list() if int(c["id"]) != own and not c["name"].startswith("sentinel-")]
        opened = probe.info("stats")["total_connections_received"]
        if client is None:
            probe.close()
        return len(clients), opened
    except (redis.RedisError, OSError):
        return None


def sample_connections(client, peak, stopping):
    """Keep peak[0] at the most client connections seen, five times a second, until stopping is set."""
    while not stopping.wait(0.2):
        counts = redis_connections(client)
        if counts:
            peak[0] = max(peak[0], counts[0])


def remote_round_trips(remote, rounds=5, pairs=2000):
    """Microseconds per session-like SET + GET from one client, through each path; medians of paired rounds.

    Django's rows above are noisy on a busy machine; this isolates the Redis
    hop. "tls, new connection" opens a fresh TLS connection for each pair:
    what every request would pay without the pool.
    """
    import redis
    from redis.sentinel import Sentinel

    host = REMOTE_HOSTS[0]
    tls = {"ssl": True, "ssl_ca_certs": str(remote["ca"])}
    clients = {
        "socket": lambda: redis.Redis(unix_socket_path=str(remote_socket())),
        "tcp": lambda: redis.Redis(host=host, port=remote["port"]),
        "tls": lambda: redis.Redis(host=host, port=remote["tls_port"], **tls),
        "sentinel": lambda: Sentinel(remote["sentinels"], socket_timeout=1).master_for("bench", socket_timeout=1),
    }
    value = os.urandom(300)  # about a session with a logged-in user
    samples = {name: [] for name in [*clients, "tls, new connection"]}
    for number in range(rounds):
        # Alternate the order, so that no path always runs first (or last) in a round.
        for name, make in list(clients.items())[:: 1 if number % 2 == 0 else -1]:
            client = make()
            client.ping()
            started = time.perf_counter()
            for i in range(pairs):
                client.set(f"bench:rt:{i}", value, ex=60)
                client.get(f"bench:rt:{i}")
            samples[name].append((time.perf_counter() - started) / pairs * 1e6)
            client.close()
        started = time.perf_counter()
        for i in range(pairs // 20):
            client = clients["tls"]()
            client.set(f"bench:rt:{i}", value, ex=60)
            client.get(f"bench:rt:{i}")
            client.close()
        samples["tls, new connection"].append((time.perf_counter() - started) / (pairs // 20) * 1e6)
    socket_us = samples["socket"]
    return {
        name: {
            "us_per_pair": round(statistics.median(values), 1),
            "ratio_to_socket": round(statistics.median(v / s for v, s in zip(values, socket_us, strict=True)), 2),
        }
        for name, values in samples.items()
    }


def run_remote_variants(wrk, entries, seconds, rounds, log=print):
    """run_variants for each redis-remote variant, counting connections on the Redis side during each.

    A pooled connection is opened once per gunicorn worker and alias; a
    request that opened its own (and paid a TLS handshake) would show as
    about one opened connection per request.
    """
    results = {}
    client = redis_client()
    try:
        for entry in entries:
            peak, stopping = [0], threading.Event()
            sampler = threading.Thread(target=sample_connections, args=(client, peak, stopping))
            before = redis_connections(client)[1]
            sampler.start()
            try:
                result = run_variants(wrk, [entry], seconds, rounds, log)
            finally:
                stopping.set()
                sampler.join()
            rows = result[entry["name"]]["rows"]
            django_requests = sum(
                sample["rps"] * seconds for name, row in rows.items() if name != "static" for sample in row["rounds"]
            )
            result[entry["name"]]["redis_connections"] = {
                "peak_connected": peak[0],
                "opened": redis_connections(client)[1] - before,
                "requests": int(django_requests),
            }
            results.update(result)
    finally:
        client.close()
    return results


# (1) The project, and the processes the bench starts and stops --------------------


def use_project(project):
    """Point the bench at a baked project: import its deploy/local_stack.py, set the paths."""
    global local_stack, ROOT, SLUG, RUN, WORK, LOGS, GUNICORN_SOCKET, REDIS_SOCKET
    project = Path(project).resolve()
    if not (project / "deploy" / "local_stack.py").exists() or not (project / ".venv").exists():
        raise RuntimeError(f"--project {project}: not a baked project with a .venv (run `make venv` there)")
    sys.path.insert(0, str(project / "deploy"))
    import local_stack as module

    local_stack, ROOT, SLUG = module, module.ROOT, module.SLUG
    RUN, WORK, LOGS = ROOT / "run", ROOT / "var" / "bench", ROOT / "logs"
    GUNICORN_SOCKET, REDIS_SOCKET = RUN / "bench-gunicorn.sock", RUN / "bench-redis.sock"


def bake(output_dir, **choices):
    """Bake a default project (with its .venv) into output_dir, or reuse the one there; return its path."""
    from cookiecutter.main import cookiecutter

    baked = sorted(output_dir.glob("*/.venv"))
    if baked:
        return baked[0].parent

    os.environ.setdefault("SOCKETSTACK_SKIP_REDIS_CHECK", "1")
    # A free port: 8000, the default, may be taken by a project of your own.
    answers = {"local_port": str(free_port()), **choices}
    project = cookiecutter(str(TEMPLATE), no_input=True, extra_context=answers, output_dir=str(output_dir))
    return Path(project)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port, path, header=None, timeout=5.0):
    """(status, headers, body) of a GET to 127.0.0.1:port; status None when nothing answers."""
    name, _, value = (header or "").partition(":")
    headers = {name: value.strip()} if header else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers), timeout=timeout
        ) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, b""
    except OSError:
        return None, {}, b""


def start(command, log_name, env=None):
    """Start a process in its own process group, its output in logs/<log_name>."""
    with open(LOGS / log_name, "ab") as log:
        env = {**os.environ, **(env or {})}
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process, sig=signal.SIGTERM, timeout=30):
    """Stop a process the bench started, and everything in its process group."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_until(check, process, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see its log in logs/")
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout} s; see its log in logs/")


def nginx_config(port):
    """The project's nginx config, pointed at the bench's gunicorn, pid file and cache."""
    moves = {
        "@APP_ROOT@/run/gunicorn.sock": f"{GUNICORN_SOCKET}",
        "@APP_ROOT@/run/nginx.pid": f"{WORK}/nginx.pid",
        "@APP_ROOT@/logs/nginx-access.log": f"{LOGS}/bench-nginx-access.log",
        "@APP_ROOT@/var/nginx-cache": f"{WORK}/nginx-cache",
    }
    files = {}
    for path in local_stack.local_nginx_templates():
        text = path.read_text()
        for old, new in moves.items():
            text = text.replace(old, new)
        files[path.name] = local_stack.render.fill_in(text, local_stack.local_values(port))
    if f"unix:{GUNICORN_SOCKET}" not in files["local.conf"] or f"{WORK}/nginx.pid" not in files["local.conf"]:
        raise RuntimeError("deploy/nginx/local.conf changed: update the paths in tools/bench.py's nginx_config()")
    files["nginx.conf"] = files.pop("local.conf")
    return files


def start_nginx(port):
    nginx = shutil.which("nginx", path=local_stack.SYSTEM_PATH)
    prefix = WORK / "nginx"
    shutil.rmtree(prefix, ignore_errors=True)
    shutil.rmtree(WORK / "nginx-cache", ignore_errors=True)
    prefix.mkdir(parents=True)
    for name, text in nginx_config(port).items():
        (prefix / name).write_text(text)
    process = start([nginx, "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "stderr"], "bench-nginx.log")
    wait_until(lambda: local_stack.port_in_use(port), process, "bench nginx")
    return process


def write_settings(lines):
    """A settings module for the bench's gunicorn: the project's, plus the /bench/ views and a variant's changes."""
    (WORK / "bench_views.py").write_text(BENCH_VIEWS)
    (WORK / "bench_urls.py").write_text(BENCH_URLS.format(slug=SLUG))
    header = [f"from {SLUG}.settings import *  # noqa: F403", "", "ROOT_URLCONF = 'bench_urls'"]
    (WORK / "bench_settings.py").write_text("\n".join([*header, *lines, ""]))


def start_gunicorn(entry, port):
    write_settings(entry["settings"])
    GUNICORN_SOCKET.unlink(missing_ok=True)
    env = {
        "DJANGO_SETTINGS_MODULE": "bench_settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(WORK), os.environ.get("PYTHONPATH")])),
        **entry["env"],
    }
    command = [
        *local_stack.venv_tool("gunicorn"),
        "--config",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
        "--bind",
        f"unix:{GUNICORN_SOCKET}",
        "--control-socket",
        str(RUN / "bench-gunicorn.ctl"),
        *entry["args"],
    ]
    process = start(command, "bench-gunicorn.log", env)
    wait_until(lambda: http_get(port, "/bench/plain")[0] == 200, process, "bench gunicorn", 60)
    return process


def start_redis():
    """A throwaway redis-server on a unix socket and on 127.0.0.1: (process, tcp port)."""
    redis_server = shutil.which("redis-server", path=local_stack.SYSTEM_PATH)
    if not redis_server:
        raise RuntimeError("redis-server is not installed (sudo apt-get install redis-server)")
    port = free_port()
    REDIS_SOCKET.unlink(missing_ok=True)
    directory = WORK / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        redis_server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--unixsocket",
        str(REDIS_SOCKET),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]
    process = start(command, "bench-redis.log")
    wait_until(bench_redis_ping, process, "bench redis-server")
    return process, port


def bench_redis_ping():
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(REDIS_SOCKET))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# PostgreSQL (--postgres) ---------------------------------------------------------
# A throwaway cluster of the newest PostgreSQL installed (the project's own initdb, account
# and bin-directory helpers from deploy/local_stack.py: as root it runs as an unprivileged
# account) on a unix socket in run/ and on 127.0.0.1 at once, and SQLite WAL
# as the project ships it, each migrated once. Needs a bake with
# database=postgresql (--postgres bakes one) and psycopg-pool for the pool row.
PG_DB = "bench"


def start_postgres():
    """(process, socket dir, tcp port) of a throwaway cluster in var/bench/postgres."""
    pg_bin = local_stack.postgres_bindir()
    data, socket_dir, port = WORK / "postgres", RUN / "bench-postgres", free_port()
    shutil.rmtree(data, ignore_errors=True)
    account = local_stack.cluster_account()
    for path in (data, socket_dir):
        local_stack.own_dir(path, account)
    initdb = [pg_bin / "initdb", "-D", data, "-U", "bench", "--auth-local=trust", "--auth-host=trust", "-E", "UTF8",
              "--locale=C.UTF-8"]  # fmt: skip
    subprocess.run(local_stack.as_cluster_account(initdb), check=True, stdout=subprocess.DEVNULL)
    command = [pg_bin / "postgres", "-D", data, "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
               "-c", f"unix_socket_directories={socket_dir}"]  # fmt: skip
    process = start(local_stack.as_cluster_account(command), "bench-postgres.log")
    ready = [pg_bin / "pg_isready", "-q", "-h", socket_dir, "-p", str(port), "-U", "bench", "-d", "postgres"]
    wait_until(lambda: subprocess.run(ready).returncode == 0, process, "bench postgres")
    psql = [pg_bin / "psql", "-X", "-q", "-h", socket_dir, "-p", str(port), "-U", "bench", "-d", "postgres"]
    subprocess.run([*psql, "-c", f"CREATE DATABASE {PG_DB}"], check=True)
    return process, socket_dir, port


def migrate(database_url):
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)


def postgres_variants(socket_dir, port):
    """cached_db sessions on PostgreSQL vs SQLite WAL; the socket vs TCP; persistent vs pooled vs new connections."""
    socket_url = f"postgres://bench@:{port}/{PG_DB}?host={socket_dir}"
    tcp_url = f"postgres://bench@127.0.0.1:{port}/{PG_DB}"
    sqlite_url = f"sqlite:///{(WORK / 'bench.sqlite3').relative_to(ROOT)}"
    for url in (socket_url, sqlite_url):
        migrate(url)
    rows = ["plain", "orm-read", "session-write"]
    cached_db = [engine("cached_db")]
    pool_missing = subprocess.run([sys.executable, "-c", "import psycopg_pool"], capture_output=True).returncode
    if pool_missing:
        print("bench: no psycopg-pool in the project's .venv, so no pg-pool row: "
              ".venv/bin/python -m uv pip install --python .venv/bin/python psycopg-pool")  # fmt: skip
    variants = [
        variant("pg-persistent", rows, {"DATABASE_URL": socket_url}, cached_db,
                note="PostgreSQL over its unix socket, as shipped: CONN_MAX_AGE=600 and CONN_HEALTH_CHECKS"),
        variant("pg-tcp", ["plain", "orm-read"], {"DATABASE_URL": tcp_url}, cached_db,
                note="the same, over TCP on 127.0.0.1"),
        variant("pg-none", rows, {"DATABASE_URL": socket_url}, [*cached_db, "DATABASES['default']['CONN_MAX_AGE'] = 0",
                "DATABASES['default']['CONN_HEALTH_CHECKS'] = False"],
                note="a new connection per request (CONN_MAX_AGE=0)"),
        variant("pg-pool", rows, {"DATABASE_URL": socket_url}, [*cached_db, "DATABASES['default']['CONN_MAX_AGE'] = 0",
                "DATABASES['default']['OPTIONS']['pool'] = {'min_size': 1, 'max_size': 2}"],
                note="Django's psycopg pool (psycopg-pool), 1-2 connections per worker"),
        variant("sqlite-wal", rows, {"DATABASE_URL": sqlite_url}, cached_db,
                note="SQLite as shipped (WAL, synchronous=NORMAL, IMMEDIATE), for the cached_db write"),
    ]  # fmt: skip
    return [entry for entry in variants if not (pool_missing and entry["name"] == "pg-pool")]


PG_ROWS = ["plain", "orm-read", "session-write"]


def start_pg_gunicorn(entry):
    """One variant's own gunicorn on a free 127.0.0.1 port: (process, port). No nginx
    in front: it costs every variant the same, and wrk can reach gunicorn directly."""
    module = "bench_settings_" + entry["name"].replace("-", "_")
    header = [f"from {SLUG}.settings import *  # noqa: F403", "", "ROOT_URLCONF = 'bench_urls'"]
    (WORK / f"{module}.py").write_text("\n".join([*header, *entry["settings"], ""]))
    port = free_port()
    env = {
        "DJANGO_SETTINGS_MODULE": module,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(WORK), os.environ.get("PYTHONPATH")])),
        **entry["env"],
    }
    command = [*local_stack.venv_tool("gunicorn"), "--config", str(ROOT / "deploy" / "gunicorn.conf.py"),
               "--bind", f"127.0.0.1:{port}", "--control-socket", str(RUN / f"bench-{entry['name']}.ctl")]  # fmt: skip
    return start(command, "bench-gunicorn.log", env), port


def run_postgres_interleaved(wrk, entries, seconds, rounds, log=print):
    """Every --postgres variant's gunicorn runs at once; each round measures every row
    of every variant in turn, so the two sides of each ratio are seconds apart, not
    minutes: on a shared, busy machine that is what keeps the ratios steady.
    Returns {variant: {row: [req/s per round]}}."""
    (WORK / "bench_views.py").write_text(BENCH_VIEWS)
    (WORK / "bench_urls.py").write_text(BENCH_URLS.format(slug=SLUG))
    processes, ports, cookies = {}, {}, {}
    try:
        for entry in entries:
            processes[entry["name"]], ports[entry["name"]] = start_pg_gunicorn(entry)
        for entry in entries:
            name = entry["name"]
            ready = lambda port=ports[name]: http_get(port, "/bench/plain")[0] == 200  # noqa: E731
            wait_until(ready, processes[name], f"{name} gunicorn", 60)
            cookies[name] = session_cookie(ports[name])
        rates = {entry["name"]: {row: [] for row in entry["rows"]} for entry in entries}
        for number in range(rounds):
            log(f"bench: PostgreSQL round {number + 1} of {rounds}")
            for row in PG_ROWS:
                for entry in entries:
                    if row in entry["rows"]:
                        header = cookies[entry["name"]] if row.startswith("session") else None
                        url = f"http://127.0.0.1:{ports[entry['name']]}{ROWS[row][0]}"
                        rates[entry["name"]][row].append(run_wrk(wrk, url, seconds, header)["rps"])
    finally:
        for process in processes.values():
            stop(process)
    return rates


def postgres_summary(rates):
    """Medians over the rounds of ratios within one round: the row's rate in two
    variants, and the same over each variant's plain view of that round."""
    pairs = {
        "postgres / sqlite WAL (cached_db session-write)": ("pg-persistent", "sqlite-wal", "session-write"),
        "postgres socket / tcp (orm-read)": ("pg-persistent", "pg-tcp", "orm-read"),
        "pool / persistent (orm-read)": ("pg-pool", "pg-persistent", "orm-read"),
        "none / persistent (orm-read)": ("pg-none", "pg-persistent", "orm-read"),
        "pool / persistent (session-write)": ("pg-pool", "pg-persistent", "session-write"),
        "none / persistent (session-write)": ("pg-none", "pg-persistent", "session-write"),
    }
    ratios = {}
    for name, (a, b, row) in pairs.items():
        if a not in rates or b not in rates:
            continue
        runs = list(zip(rates[a][row], rates[b][row], rates[a]["plain"], rates[b]["plain"], strict=True))
        ratios[name] = statistics.median(ra / rb for ra, rb, _, _ in runs)
        ratios[f"{name}, each over its plain"] = statistics.median((ra / pa) / (rb / pb) for ra, rb, pa, pb in runs)
    return {name: round(value, 3) for name, value in ratios.items()}


# (2) Measuring ---------------------------------------------------------------------


def static_file(home_size):
    """The hashed static file whose size is closest to the home page's."""
    manifest = json.loads((ROOT / "static" / "staticfiles.json").read_text())
    sizes = {name: (ROOT / "static" / name).stat().st_size for name in manifest["paths"].values()}
    return "/static/" + min(sizes, key=lambda name: (abs(sizes[name] - home_size), name))


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output):
    """req/s, p99 in ms and failed requests from wrk's --latency output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not rate or not p99:
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return {"rps": float(rate.group(1)), "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)], "errors": errors}


def run_wrk(wrk, url, seconds, header=None):
    command = [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
    if header:
        command += ["-H", header]
    result = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 30)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr.strip()}")
    return parse_wrk(result.stdout)


def session_cookie(port):
    """Create one session through the bench's view; its Cookie header for the session rows."""
    status, headers, _ = http_get(port, "/bench/session-write")
    for header in headers.get_all("Set-Cookie") or []:
        if header.startswith("sessionid="):
            return "Cookie: " + header.split(";", 1)[0]
    raise RuntimeError(f"/bench/session-write set no session cookie (status {status})")


def measure_variant(wrk, entry, port, seconds, rounds):
    """Rounds of every row of a variant, each paired with a static-file run; medians."""
    base_url = f"http://127.0.0.1:{port}"
    cookie = session_cookie(port) if any(row.startswith("session") for row in entry["rows"]) else None
    home_size = len(http_get(port, "/")[2]) or 1000
    paths = {name: (static_file(home_size) if path == "STATIC" else path) for name, (path, _, _) in ROWS.items()}
    headers = {name: (cookie if header == "session" else header) for name, (_, header, _) in ROWS.items()}
    rows = ["static", *[row for row in entry["rows"] if row != "static"]]
    for row in rows:  # warm the caches; every row must answer 200 before it is measured
        status = http_get(port, paths[row], headers[row])[0]
        if status != 200:
            raise RuntimeError(f"{paths[row]} answered {status}, not 200; see logs/bench-gunicorn.log")
    samples = {row: [] for row in rows}
    for _ in range(rounds):
        for row in rows:
            samples[row].append(run_wrk(wrk, base_url + paths[row], seconds, headers[row]))
    results = {}
    for row in rows:
        ratios = [s["rps"] / ref["rps"] for s, ref in zip(samples[row], samples["static"], strict=True)]
        results[row] = {
            "path": paths[row],
            "rps": statistics.median(s["rps"] for s in samples[row]),
            "p99_ms": statistics.median(s["p99_ms"] for s in samples[row]),
            "ratio_to_static": statistics.median(ratios),
            "errors": sum(s["errors"] for s in samples[row]),
            "rounds": samples[row],
        }
    return results


def run_variants(wrk, entries, seconds, rounds, log=print):
    results = {}
    port = free_port()
    nginx = gunicorn = None
    try:
        nginx = start_nginx(port)
        for entry in entries:
            log(f"bench: {entry['name']} ({seconds} s x {len(entry['rows']) + 1} rows x {rounds} rounds)")
            gunicorn = start_gunicorn(entry, port)
            try:
                rows = measure_variant(wrk, entry, port, seconds, rounds)
            finally:
                stop(gunicorn)
            results[entry["name"]] = {**{key: entry[key] for key in ("env", "args", "settings", "note")}, "rows": rows}
    finally:
        stop(gunicorn)
        stop(nginx, signal.SIGQUIT)
        GUNICORN_SOCKET.unlink(missing_ok=True)
    return results


# (3) Report -------------------------------------------------------------------------


def table(name, result):
    lines = [f"{name}" + (f": {result['note']}" if result["note"] else "")]
    lines.append(f"  {'row':<15} {'req/s':>9} {'p99 ms':>8} {'x static':>9} {'errors':>7}  path")
    for row, data in result["rows"].items():
        lines.append(
            f"  {row:<15} {data['rps']:>9.0f} {data['p99_ms']:>8.2f} {data['ratio_to_static']:>9.3f} "
            f"{data['errors']:>7}  {data['path']}"
        )
    if "redis_connections" in result:
        counts = result["redis_connections"]
        lines.append(
            f"  Redis side: at most {counts['peak_connected']} app connections at once, "
            f"{counts['opened']} opened for {counts['requests']} Django requests"
        )
    return "\n".join(lines)


def markdown(report):
    """The results as Markdown tables, ready for docs/performance.md."""
    lines = [
        f"{report['cpus']} CPUs, wrk -t{report['wrk']['threads']} -c{report['wrk']['connections']} on loopback, "
        f"{report['seconds']} s per row, medians of {report['rounds']} rounds ({report['date']}).",
    ]
    for name, result in report["variants"].items():
        lines += ["", f"**{name}**" + (f": {result['note']}" if result["note"] else ""), ""]
        lines += ["| row | req/s | p99 ms | x static |", "| --- | ---: | ---: | ---: |"]
        for row, data in result["rows"].items():
            lines.append(f"| {row} | {data['rps']:.0f} | {data['p99_ms']:.1f} | {data['ratio_to_static']:.3f} |")
        if "redis_connections" in result:
            counts = result["redis_connections"]
            lines += ["", f"Redis side: at most {counts['peak_connected']} app connections at once, "
                      f"{counts['opened']} opened for {counts['requests']} Django requests."]  # fmt: skip
    if report.get("redis_round_trips"):
        lines += ["", "**Redis round trips** (one client, SET + GET of 300 bytes, medians of paired rounds):", ""]
        lines += ["| path | µs per SET + GET | x unix socket |", "| --- | ---: | ---: |"]
        for name, data in report["redis_round_trips"].items():
            lines.append(f"| {name} | {data['us_per_pair']:.0f} | {data['ratio_to_socket']:.2f} |")
    if report["summary"]:
        lines += ["", "| ratio | value |", "| --- | ---: |"]
        lines += [f"| {name} | {value:.2f} |" for name, value in report["summary"].items()]
    return "\n".join(lines) + "\n"


def ratio(results, a, row_a, b, row_b):
    try:
        return results[a]["rows"][row_a]["ratio_to_static"] / results[b]["rows"][row_b]["ratio_to_static"]
    except (KeyError, ZeroDivisionError):
        return None


def normalised(results, a, b):
    """(session-write / plain in variant a) / (session-write / plain in variant b)."""
    own_a = ratio(results, a, "session-write", a, "plain")
    own_b = ratio(results, b, "session-write", b, "plain")
    return own_a / own_b if own_a and own_b else None


def summary(results):
    """The headline ratios, each between two rows of one run (ratios of their static-relative rates)."""
    ratios = {
        "home / static": ratio(results, "default", "home", "default", "static"),
        "home-django / static": ratio(results, "default", "home-django", "default", "static"),
        "session-write / plain": ratio(results, "default", "session-write", "default", "plain"),
        "session-read / plain": ratio(results, "default", "session-read", "default", "plain"),
        "cache sessions / db sessions (write)": ratio(
            results, "sessions-cache", "session-write", "sessions-db", "session-write"
        ),
        "cached_db / cache sessions (write)": ratio(
            results, "sessions-cached_db", "session-write", "sessions-cache", "session-write"
        ),
        # Each write over the plain view of its own variant: steadier when the
        # variants ran minutes apart on a busy machine.
        "cache / db sessions (write / plain of each)": normalised(results, "sessions-cache", "sessions-db"),
        "cached_db / cache sessions (write / plain of each)": normalised(
            results, "sessions-cached_db", "sessions-cache"
        ),
        "socket / tcp (session-write)": ratio(results, "redis-socket", "session-write", "redis-tcp", "session-write"),
        "socket / tcp (home-django)": ratio(results, "redis-socket", "home-django", "redis-tcp", "home-django"),
        **{
            f"{name} / socket ({row})": ratio(results, f"remote-{name}", row, "remote-socket", row)
            for name in ("tcp", "tls", "sentinel")
            for row in ("session-write", "session-read")
        },
    }
    return {name: round(value, 3) for name, value in ratios.items() if value is not None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="length of each measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians (default 3)")
    parser.add_argument(
        "--compare",
        default="",
        help="also run these groups, comma-separated: workers, recycling, sessions, redis, redis-options, "
        "redis-remote (or all)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also compare PostgreSQL: vs SQLite WAL (cached_db), socket vs TCP, pool vs persistent vs none "
        "(bakes with database=postgresql into var/bench-postgres)",
    )
    parser.add_argument("--project", type=Path, help="a baked project with its .venv (default: bake one)")
    parser.add_argument(
        "--bake-into", type=Path, default=TEMPLATE / "var" / "bench", help="where to bake when --project is not given"
    )
    parser.add_argument(
        "--json", type=Path, help="where to write the results (default: <project>/var/bench/latest.json)"
    )
    args = parser.parse_args(argv)

    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit(
            "tools/bench.py: wrk is not installed. Debian/Ubuntu: sudo apt-get install wrk; macOS: brew install wrk."
        )
    groups = [name.strip() for name in args.compare.replace(" ", ",").split(",") if name.strip()]
    if groups == ["all"]:
        groups = list(comparisons(0))
    unknown = sorted(set(groups) - set(comparisons(0)))
    if unknown:
        sys.exit(f"tools/bench.py: unknown comparison {', '.join(unknown)}; choose from {', '.join(comparisons(0))}")
    redis = postgres = None
    remote_processes, round_trips = [], None
    if args.postgres and args.bake_into == TEMPLATE / "var" / "bench":
        args.bake_into = TEMPLATE / "var" / "bench-postgres"
    try:
        choices = {"database": "postgresql", "session_engine": "cached_db"} if args.postgres else {}
        project = (args.project or bake(args.bake_into, **choices)).resolve()
        python = project / ".venv" / "bin" / "python"
        if Path(sys.prefix).resolve() != python.parent.parent.resolve() and python.exists():
            # local_stack runs manage.py with this interpreter: use the project's.
            os.execv(python, [str(python), __file__, *(argv or sys.argv[1:]), "--project", str(project)])
        use_project(project)
        args.json = args.json or WORK / "latest.json"
        if local_stack.healthz_status(local_stack.local_port()) != 200:
            local_stack.up()
        WORK.mkdir(parents=True, exist_ok=True)
        entries = [variant("default", note="the generated settings, as `make up` runs them")]
        if "redis" in groups:
            redis, tcp_port = start_redis()
        else:
            tcp_port = 0
        if "redis-remote" in groups:
            global REMOTE
            remote_processes, REMOTE = start_remote_redis()
        available = comparisons(tcp_port)
        for group in groups:
            if group != "redis-remote":
                entries += available[group]
        results = run_variants(wrk, entries, args.seconds, args.rounds)
        if args.postgres:
            postgres, socket_dir, pg_port = start_postgres()
            pg_entries = postgres_variants(socket_dir, pg_port)
            pg_rates = run_postgres_interleaved(wrk, pg_entries, args.seconds, args.rounds)
        if "redis-remote" in groups:
            round_trips = remote_round_trips(REMOTE)
            results.update(run_remote_variants(wrk, available["redis-remote"], args.seconds, args.rounds))
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        sys.exit(f"tools/bench.py: {exc}")
    except Exception as exc:
        if local_stack and isinstance(exc, local_stack.StackError):
            sys.exit(f"tools/bench.py: {exc}")
        raise
    finally:
        stop(redis)
        stop(postgres, signal.SIGINT)  # PostgreSQL's fast shutdown
        if postgres:
            shutil.rmtree(RUN / "bench-postgres", ignore_errors=True)
        for process in remote_processes:
            stop(process)
        if RUN:
            remote_socket().unlink(missing_ok=True)
        if REDIS_SOCKET:
            REDIS_SOCKET.unlink(missing_ok=True)

    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": CPUS,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "wrk": {"threads": WRK_THREADS, "connections": WRK_CONNECTIONS},
        "rows": {name: description for name, (_, _, description) in ROWS.items()},
        "variants": results,
        "summary": {**summary(results), **(postgres_summary(pg_rates) if args.postgres else {})},
        "postgres": {
            "note": "req/s per round of each --postgres variant's own gunicorn, straight to 127.0.0.1 (no nginx)",
            "rates": pg_rates if args.postgres else {},
        },
        **({"redis_round_trips": round_trips} if round_trips else {}),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    args.json.with_suffix(".md").write_text(markdown(report))
    print()
    print(f"{CPUS} CPUs; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {args.seconds} s per row, median of {args.rounds}")
    for name, result in results.items():
        print()
        print(table(name, result))
    print()
    for name, value in report["summary"].items():
        print(f"  {name:<40} {value:.3f}")
    for name, data in (report.get("redis_round_trips") or {}).items():
        print(f"  Redis SET+GET {name:<26} {data['us_per_pair']:>7.0f} us  x{data['ratio_to_socket']:.2f} of socket")
    print(f"\nJSON: {args.json}; Markdown tables: {args.json.with_suffix('.md')}")


if __name__ == "__main__":
    main()
