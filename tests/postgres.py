"""Helpers for the PostgreSQL tests (database=postgresql): a running stack, psql
against it, and throwaway clusters of Debian's PostgreSQL, whichever major
version is installed (15 on Debian 12, 17 on Debian 13): the template's own
deploy/local_stack.py finds it (postgres_bindir), as `make up` does.

PostgreSQL refuses to run as root. The tests run as root (as CI does), so a
throwaway cluster runs as `nobody`, like the stack's own does when root owns
the project, and its directories must be reachable by nobody.
"""

import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SHORT_DIRS, TEMPLATE, Stack, bake, free_port, pids_matching, project_module, require, run

LOCAL_STACK = project_module(TEMPLATE / "{{cookiecutter.project_slug}}", "deploy/local_stack.py")


def require_postgres():
    """The bin directory of the newest PostgreSQL installed: a failure in CI, a skip on a laptop."""
    try:
        return LOCAL_STACK.postgres_bindir()
    except LOCAL_STACK.StackError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def postgres_major():
    """The major version in Debian's cluster paths (/etc/postgresql/<major>/<name>): 15, 17."""
    return require_postgres().parent.name


def open_to_others(project):
    """Short bake directories are mkdtemp's 0700: let postgres's account (nobody) through."""
    project.parent.chmod(0o755)


def start_pg_stack(cookies, **choices):
    """Bake with database=postgresql and a real .venv, then `make up`."""
    require_postgres()
    require("redis-server")
    require("nginx")
    project = bake(cookies, venv=True, local_port=str(free_port()), database="postgresql", **choices)
    open_to_others(project)
    stack = Stack(project)
    stack.bin = require_postgres()
    stack.make("up")
    return stack


def psql(stack, sql):
    """One query on the stack's database over its socket, as the project's role; rows as text."""
    result = run(
        [require_postgres() / "psql", "-X", "-At", "-h", stack.project / "run" / "postgres", "-U", stack.slug,
         "-d", stack.slug, "-c", sql],
        stack.project,
    )  # fmt: skip
    return result.stdout.strip()


def postgres_pids(directory):
    """PIDs of postgres processes whose command line names `directory`."""
    return pids_matching(lambda cmdline: "postgres" in cmdline.split(" ")[0] and str(directory) in cmdline)


def uid_of(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


class Cluster:
    """A throwaway cluster of the newest PostgreSQL installed, on a unix socket in a
    short directory (trust there), and on TCP when `tcp_port` is given. As root it runs as nobody. initdb
    runs here; start() starts it, after a test has added its files or hba lines."""

    def __init__(self, tcp_port=None, listen="127.0.0.1"):
        self.bin = require_postgres()
        self.dir = Path(tempfile.mkdtemp(prefix="sst-pg-", dir="/tmp"))
        SHORT_DIRS.append(self.dir)
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.tcp_port, self.listen = tcp_port, listen
        self.account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        for path in (self.data, self.socket_dir):
            path.mkdir(mode=0o700)
            self.own(path)
        self.user = "postgres"
        self.as_account([self.bin / "initdb", "-D", self.data, "-U", self.user, "--auth-local=trust",
                         "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])  # fmt: skip

    def own(self, path, mode=None):
        if os.geteuid() == 0:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)
        if mode is not None:
            path.chmod(mode)

    def start(self, *options):
        listen = f"listen_addresses='{self.listen}' -c port={self.tcp_port}" if self.tcp_port else "listen_addresses=''"
        extra = " ".join(f"-c {option}" for option in options)
        self.as_account([self.bin / "pg_ctl", "-D", self.data, "-l", self.data / "server.log", "-w", "-o",
                         f"-c {listen} -c unix_socket_directories={self.socket_dir} {extra}", "start"])  # fmt: skip
        return self

    def as_account(self, command):
        if os.geteuid() == 0:
            command = ["setpriv", f"--reuid={self.account.pw_uid}", f"--regid={self.account.pw_gid}",
                       "--clear-groups", *command]  # fmt: skip
        return run([str(part) for part in command], self.dir)

    def psql(self, sql, database="postgres"):
        return run(
            [self.bin / "psql", "-X", "-At", "-h", self.socket_dir, "-p", str(self.tcp_port or 5432), "-U", self.user,
             "-d", database, "-c", sql],
            self.dir,
        ).stdout.strip()  # fmt: skip

    def stop(self):
        self.as_account([self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(check, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
