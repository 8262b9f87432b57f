"""Run the production topology in user space: `make up`, `make down`.

supervisord (deploy/supervisor/local.conf) runs the two Redis instances,
gunicorn and nginx, all on unix sockets in run/ except nginx's
127.0.0.1:LOCAL_PORT. This script prepares directories, renders the nginx
config, starts or updates supervisord and waits for /healthz through nginx.
"""

import importlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import render
from supervisor.xmlrpc import SupervisorTransport

SLUG = "{{ cookiecutter.project_slug }}"
DATABASE = "{{ cookiecutter.database }}"
ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "run"
SUPERVISOR_CONF = ROOT / "deploy" / "supervisor" / "local.conf"
DIRS = (
    "run",
    "run/nginx",
    "logs",
    "static",
    "media",
    "var/redis-cache",
    "var/redis-sessions",
    "var/nginx",
    "var/acme",
)
# nginx and redis-server live in sbin/bin directories that a normal user's
# PATH may lack.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StackError(Exception):
    """A failure with a message that tells the user what to do."""


def read_env():
    """.env through the project's own parser (SLUG/env.py, standard library only)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"{SLUG}.env").read_env_file(ROOT / ".env")


def local_port():
    return int(os.environ.get("LOCAL_PORT") or read_env().get("LOCAL_PORT") or 8000)


def prepare_dirs():
    """Create the writable directories and prove they are writable."""
    check_socket_paths()
    for name in DIRS:
        path = ROOT / name
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StackError(
                f"{path}: cannot write there ({exc.strerror}). "
                "Free disk space or make it writable for this user, then run `make up` again."
            ) from exc


# The kernel limits a unix socket path to 107 bytes; supervisor spells the
# paths as deploy/supervisor/../../run/<name>, so the project root must be
# short enough for that spelling of the longest socket name.
SOCKET_PATH_MAX = 107
LONGEST_SOCKET = "deploy/supervisor/../../run/redis-sessions.sock"


def check_socket_paths():
    longest = f"{ROOT}/{LONGEST_SOCKET}"
    if len(longest.encode()) > SOCKET_PATH_MAX:
        raise StackError(
            f"{ROOT}: the path is too long for unix sockets ({len(longest.encode())} > {SOCKET_PATH_MAX} bytes "
            f"for {longest}). Move the project to a shorter path."
        )


def local_values(port):
    """What deploy/render.py fills into the local nginx files."""
    return {"APP_ROOT": ROOT, "LOCAL_PORT": port, "USER_LINE": nginx_user_line()}


def render_only():
    """Prepare directories and write the nginx config, without starting anything."""
    prepare_dirs()
    render_nginx()
    print(f"nginx config written to {ROOT / 'run' / 'nginx' / 'nginx.conf'}")


def local_nginx_templates():
    """The files of deploy/nginx/ that the local stack uses (site.conf and default.conf are the server's)."""
    # The page cache snippets exist only with the nginx_page_cache option.
    names = ("local.conf", "locations.conf", "page-cache-zone.conf", "page-cache.conf")
    return [ROOT / "deploy" / "nginx" / name for name in names if (ROOT / "deploy" / "nginx" / name).exists()]


def nginx_user_line():
    # As root, nginx would drop its workers to `nobody`, who cannot reach the
    # sockets in run/; a normal user's nginx ignores `user` and stays as is.
    return "user root root;" if os.geteuid() == 0 else ""


def render_nginx(port=None):
    """Write run/nginx/ (local.conf as nginx.conf); return True when anything changed."""
    values = local_values(port or local_port())
    changed = False
    for template in local_nginx_templates():
        text = render.fill_in(template.read_text(), values)
        target = ROOT / "run" / "nginx" / ("nginx.conf" if template.name == "local.conf" else template.name)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            changed = True
    return changed


def rpc():
    transport = SupervisorTransport(None, None, f"unix://{ROOT}/run/supervisor.sock")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def supervisor_running():
    try:
        return rpc().supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Fault):
        return False


def remove_stale_files():
    """After a crash, sockets and pid files stay behind and block a new start.

    Runs when supervisord is not running: in `make down` and before a fresh start.
    """
    for path in list((ROOT / "run").glob("*.sock")) + list((ROOT / "run").glob("*.pid")):
        path.unlink(missing_ok=True)
    (ROOT / "run" / "gunicorn.ctl").unlink(missing_ok=True)
    # nginx's page cache (nginx_page_cache): entries live 5 s anyway, but a
    # fresh stack starts empty, so `make down` / `make up` is a purge.
    shutil.rmtree(ROOT / "var" / "nginx-cache", ignore_errors=True)


def venv_tool(module):
    # `python -m`, not the .venv/bin script: a script's #! line holds the path
    # where .venv was made, and the project folder may have moved since.
    return [str(ROOT / ".venv" / "bin" / "python"), "-m", module]


def supervisor_env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}:{SYSTEM_PATH}"
    return env


def manage(*args):
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, check=True)


def start_or_update(nginx_changed=False):
    if supervisor_running():
        ctl = [*venv_tool("supervisor.supervisorctl"), "-c", str(SUPERVISOR_CONF)]
        subprocess.run([*ctl, "update"], check=True, env=supervisor_env(), stdout=subprocess.DEVNULL)
        subprocess.run([*ctl, "start", *startable_programs()], env=supervisor_env(), stdout=subprocess.DEVNULL)
        if nginx_changed:
            rpc().supervisor.signalProcess(f"{SLUG}:{SLUG}-nginx", "HUP")
        return "updated"
    remove_stale_files()
    subprocess.run([*venv_tool("supervisor.supervisord"), "-c", str(SUPERVISOR_CONF)], check=True, env=supervisor_env())
    return "started"


# Only what .env points at runs here: a store whose Redis is elsewhere
# (REDIS_<STORE>_URL not unix://, or REDIS_<STORE>_SENTINELS set) gets no
# local redis-server. run/remote-redis.conf, which local.conf includes after
# programs.conf, turns its autostart off.
REMOTE_REDIS_CONF = RUN / "remote-redis.conf"


def remote_redis_stores():
    """The stores ("cache", "sessions") whose Redis .env (or the environment) puts on another host."""
    values = {**read_env(), **os.environ}
    env = importlib.import_module(f"{SLUG}.env")
    remote = []
    for store in ("cache", "sessions"):
        prefix = f"REDIS_{store.upper()}"
        sentinels = [item.strip() for item in values.get(f"{prefix}_SENTINELS", "").split(",") if item.strip()]
        try:
            for item in sentinels:
                env.sentinel_address(f"{prefix}_SENTINELS", item)
        except ValueError as exc:
            raise StackError(str(exc)) from exc
        url = values.get(f"{prefix}_URL", "")
        if sentinels or (url and not url.startswith("unix://")):
            remote.append(store)
    return remote


def write_remote_redis_conf():
    """Write run/remote-redis.conf for the local Redis programs that must not start."""
    programs = (ROOT / "deploy" / "supervisor" / "programs.conf").read_text()
    names = [f"{SLUG}-redis-{store}" for store in remote_redis_stores()]
    text = "".join(f"[program:{name}]\nautostart=false\n" for name in names if f"[program:{name}]" in programs)
    REMOTE_REDIS_CONF.write_text(f"; Written by deploy/local_stack.py from .env: Redis that runs elsewhere.\n{text}")


def startable_programs():
    """Every program but the local Redis instances that .env points away from."""
    skipped = {f"{SLUG}-redis-{store}" for store in remote_redis_stores()}
    processes = rpc().supervisor.getAllProcessInfo()
    return [f"{p['group']}:{p['name']}" for p in processes if p["name"] not in skipped]


def port_in_use(port):
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def healthz_status(port, timeout=2.0):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def tail(path, lines=50):
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def explain_failure():
    """Name the programs that are not running and show the end of their logs."""
    report = []
    try:
        processes = rpc().supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Fault):
        return "supervisord is not running:\n" + tail(ROOT / "logs" / "supervisord.log")
    broken = [p for p in processes if p["statename"] != "RUNNING"]
    for process in broken or processes:
        report.append(f"--- {process['name']}: {process['statename']} (log: {process['stdout_logfile']})")
        report.append(tail(Path(process["stdout_logfile"])))
    return "\n".join(report)


def wait_healthy(port, timeout=None):
    timeout = timeout or float(os.environ.get("UP_TIMEOUT", "30"))
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = healthz_status(port)
        if status == 200:
            return
        time.sleep(0.2)
    raise StackError(f"/healthz did not answer 200 within {timeout:.0f} s (last: {status}).\n" + explain_failure())


# PostgreSQL (database=postgresql) ----------------------------------------------
# The local stack's own cluster: data in var/postgres, socket in run/postgres/
# (no TCP), `trust` on that socket, whose directory only the cluster's account
# (and root) can enter. supervisord runs it (deploy/supervisor/local.conf)
# through `local_stack.py postgres`, which picks the account.
PG_ROOT = Path("/usr/lib/postgresql")
PG_DATA = ROOT / "var" / "postgres"
PG_RUN = ROOT / "run" / "postgres"
BACKUPS = ROOT / "var" / "backups"


def postgres_version(bindir):
    """(15,) for /usr/lib/postgresql/15/bin; () for a name that is no version."""
    name = bindir.parent.name
    return tuple(int(part) for part in name.split(".")) if name.replace(".", "").isdigit() else ()


def postgres_bindir(program="postgres", data=None, root=PG_ROOT):
    """The directory of Debian's PostgreSQL programs, whatever the major version
    (15 on Debian 12, 17 on Debian 13, 16 on Ubuntu 24.04 in CI): $PG_BINDIR when
    set, else the version that made the cluster in `data`, else the newest one
    with `program` installed. Not `pg_config --bindir`: it names the newest
    client (or libpq-dev's version), which may have no server beside it."""
    if os.environ.get("PG_BINDIR"):
        bindir = Path(os.environ["PG_BINDIR"])
        if not (bindir / program).exists():
            raise StackError(f"PG_BINDIR={bindir} has no {program}: unset it, or name a directory that has.")
        return bindir
    installed = sorted((path.parent for path in root.glob(f"*/bin/{program}")), key=postgres_version)
    made_by = data / "PG_VERSION" if data else None
    if made_by and made_by.exists():
        version = made_by.read_text().strip()
        if (root / version / "bin" / program).exists():
            return root / version / "bin"
        others = ", ".join(path.parent.name for path in installed) or "none"
        raise StackError(
            f"{data} is a PostgreSQL {version} cluster and {root / version / 'bin' / program} is missing "
            f"(installed: {others}): sudo apt-get install postgresql-{version} (apt.postgresql.org has it when "
            f"your release does not) and `make backup`, or move {data} away and `make up` makes a new, empty cluster."
        )
    if not installed:
        raise StackError(
            f"PostgreSQL is not installed (no {root}/*/bin/{program}): sudo apt-get install postgresql, "
            "or set PG_BINDIR to the directory of its programs."
        )
    return installed[-1]


def local_database_url():
    """settings.py's default with database=postgresql."""
    return f"postgres://{SLUG}@/{SLUG}?host={PG_RUN}"


def database_url():
    return os.environ.get("DATABASE_URL") or read_env().get("DATABASE_URL") or ""


def local_postgres_wanted():
    """True when Django uses the local cluster: no DATABASE_URL, or one that names run/postgres."""
    if DATABASE != "postgresql":
        return False
    url = database_url()
    if not url:
        return True
    parts = urlsplit(url)
    host = parts.hostname or dict(parse_qsl(parts.query)).get("host", "")
    return parts.scheme in {"postgres", "postgresql"} and host.startswith("/") and Path(host).resolve() == PG_RUN


def cluster_account():
    """The account postgres runs as: you; as root (initdb and postgres refuse
    root) the owner of the project directory, or `nobody` when root owns it."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    owner = ROOT.stat().st_uid
    try:
        return pwd.getpwuid(owner) if owner != 0 else pwd.getpwnam("nobody")
    except KeyError:  # a uid with no account (a bind mount): initdb needs a name
        return pwd.getpwnam("nobody")


def as_cluster_account(command):
    account = cluster_account()
    if os.geteuid() != 0:
        return [str(part) for part in command]
    drop = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]
    return drop + [str(part) for part in command]


def unreachable_parent(account):
    """The first directory above the cluster that the account cannot enter, or None."""
    for directory in (ROOT / "var", ROOT / "run", ROOT, *ROOT.parents):
        info = directory.stat()
        if info.st_uid == account.pw_uid:
            bit = 0o100
        elif info.st_gid == account.pw_gid:
            bit = 0o010
        else:
            bit = 0o001
        if not info.st_mode & bit:
            return directory
    return None


def own_dir(path, account):
    path.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(0o700)


def ensure_cluster():
    """initdb on the first `make up`: role and database named after the project."""
    bindir = postgres_bindir(data=PG_DATA)
    account = cluster_account()
    blocked = unreachable_parent(account)
    if blocked:
        raise StackError(
            f"PostgreSQL runs as {account.pw_name} (initdb and postgres refuse root), who cannot enter {blocked}: "
            f"`chmod o+x {blocked}`, or keep the project in a directory a normal user owns."
        )
    own_dir(PG_RUN, account)
    if (PG_DATA / "PG_VERSION").exists():
        return False
    own_dir(PG_DATA, account)
    initdb = [bindir / "initdb", "-D", PG_DATA, "-U", SLUG, "--auth-local=trust", "--auth-host=reject", "-E", "UTF8",
              "--locale=C.UTF-8"]  # fmt: skip
    # The project's database, made in single-user mode: nothing listens yet.
    single = [bindir / "postgres", "--single", "-D", PG_DATA, "postgres"]
    for command, stdin in ((initdb, None), (single, f"CREATE DATABASE {SLUG};\n")):
        done = subprocess.run(as_cluster_account(command), input=stdin, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(PG_DATA, ignore_errors=True)  # the next `make up` starts over
            raise StackError(f"{command[0].name} failed (exit code {done.returncode}):\n{done.stdout}{done.stderr}")
    return True


def postgres_command():
    return [
        postgres_bindir(data=PG_DATA) / "postgres", "-D", PG_DATA, "-c", "listen_addresses=",
        "-c", f"unix_socket_directories={PG_RUN}",
        "-c", "unix_socket_permissions=0700",
    ]  # fmt: skip


def run_postgres():
    """supervisord's command for the local PostgreSQL: becomes postgres (exec),
    so supervisor's stop signal (INT, a fast shutdown) reaches it."""
    if not local_postgres_wanted():
        print("DATABASE_URL points at another database: the local PostgreSQL stays off.", flush=True)
        return
    command = as_cluster_account(postgres_command())
    os.execvp(command[0], command)  # noqa: S606 -- a fixed command, no shell


def wait_postgres(timeout=30):
    pg_isready = postgres_bindir(data=PG_DATA) / "pg_isready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = subprocess.run([pg_isready, "-q", "-h", PG_RUN, "-U", SLUG, "-d", SLUG])
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    log = tail(ROOT / "logs" / "postgres.log")
    raise StackError(f"PostgreSQL did not accept connections within {timeout} s.\n{log}")


def start_postgres():
    """Before migrate: the cluster exists and answers (supervisord starts it)."""
    if not local_postgres_wanted():
        return None
    ensure_cluster()
    action = start_or_update()
    wait_postgres()
    return action


def backup():
    """A copy of the database in var/backups/: pg_dump --format=custom (pg_restore reads
    it) of the PostgreSQL that Django uses, or SQLite's online backup of db.sqlite3."""
    BACKUPS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    url = database_url() or (local_database_url() if DATABASE == "postgresql" else "sqlite:///db.sqlite3")
    if url.startswith("sqlite"):
        import sqlite3

        target = BACKUPS / f"{SLUG}-{stamp}.sqlite3"
        with sqlite3.connect(ROOT / urlsplit(url).path[1:]) as source, sqlite3.connect(target) as copy:
            source.backup(copy)
    else:
        target = BACKUPS / f"{SLUG}-{stamp}.dump"
        # A libpq URL as it is: postgres:///name?host=/socket/dir, TLS options and all.
        pg_dump = postgres_bindir("pg_dump") / "pg_dump"
        subprocess.run([pg_dump, "--format=custom", f"--file={target}", f"--dbname={url}"], check=True)
    print(target)


def up():
    started = time.monotonic()
    port = local_port()
    remote_redis_stores()  # a bad REDIS_*_SENTINELS is refused before anything changes
    prepare_dirs()
    if not supervisor_running() and port_in_use(port):
        # Otherwise whatever answers there would pass for this stack.
        raise StackError(
            f"127.0.0.1:{port} is already taken by another program. "
            "Stop it, or set LOCAL_PORT in .env to a free port, then run `make up` again."
        )
    nginx_changed = render_nginx(port)
    # Before supervisord starts anything, PostgreSQL included: a Redis that .env
    # puts elsewhere must not start even once.
    write_remote_redis_conf()
    postgres_action = start_postgres()
    manage("migrate", "--noinput", "-v", "0")
    manage("collectstatic", "--noinput", "-v", "0")
    action = start_or_update(nginx_changed)
    action = postgres_action or action
    wait_healthy(port)
    print(f"Stack {action} in {time.monotonic() - started:.1f} s: http://127.0.0.1:{port}/")


def down(timeout=60):
    if supervisor_running():
        pid = rpc().supervisor.getPID()
        rpc().supervisor.shutdown()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if pid_alive(pid):
            raise StackError(f"supervisord (pid {pid}) is still running after {timeout} s; see logs/supervisord.log.")
    remove_stale_files()
    print("Stack stopped.")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv):
    commands = {
        "up": up,
        "down": down,
        "render": render_only,
        "port": lambda: print(local_port()),
        "postgres": run_postgres,
        "backup": backup,
    }
    if len(argv) != 2 or argv[1] not in commands:
        sys.exit(f"usage: {argv[0]} " + "|".join(commands))
    try:
        commands[argv[1]]()
    except StackError as exc:
        sys.exit(f"make {argv[1]}: {exc}")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"make {argv[1]}: `{' '.join(map(str, exc.cmd))}` failed with exit code {exc.returncode}.")


if __name__ == "__main__":
    main(sys.argv)
