"""A Debian root filesystem of the other release, run in its own namespaces.

The suite runs on the machine's own Debian (12 or 13); this module gives the
tests the other one, built with debootstrap from Debian's archive. No test
lives here: test_debian_lane.py (and the upgrade test) import it.

API (kept stable; other tests build on it):

    host_suite() -> "bookworm" | "trixie"      this machine's release (/etc/debian_version)
    other_suite() -> "trixie" | "bookworm"     the release the lane runs in
    PYTHON[suite] -> "3.11" | "3.13"           the release's python3
    unavailable() -> str | None                why a root cannot be built or run here, or None
    build_root(suite, extra=()) -> Path        the pristine root, cached (built once)
    wheelhouse(python, locks) -> Path          wheels for that Python from pip lock files, cached
    Namespace(pristine, scratch, binds=None, memory=None)
                                               a disposable copy of a root, in its own
                                               network (loopback only), PID and mount namespaces
        .start() / .stop()                     (also a context manager); stop() kills every
                                               process of the namespace and unmounts everything
        .run(command, user=None, env=None, cwd=None, check=True, timeout=600, input=None)
                                               a shell command line (bash -c) or an argv list,
                                               as root or as `user`; a CompletedProcess (text)
        .copy_in(src, dest, owner=None)        a host file or directory into the root
        .path(inside) -> Path                  a path of the root as the host sees it
        .mode                                  "overlay" or "copy": how the copy was made
        .copy_seconds, .stop_seconds           what making and removing the copy took
    USER = "dev"                               the normal user every root has (uid 1000)

The pristine root lives in /var/cache/socketstack-roots/<suite>-<key>, the key
a hash of the suite, the mirror, the package list and BUILDER_VERSION: a new
package list or builder gives a new root, and a half-built root never gets
that name (it is built beside it, then renamed). Roots unused for 14 days are
removed when a new one is built. Each Namespace works on its
own copy: an overlayfs (lower: the pristine root, upper: the scratch
directory) mounted inside the namespace's private mount namespace, or, where
overlayfs does not work, `cp -a --reflink=auto`.

Inside, PID 1 is a small reaper (daemons that double-fork become its
children, not zombies), and the namespace's network has only `lo`: nothing
there reaches the machine's ports, and the machine's services are not seen.
"""

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOTS = Path("/var/cache/socketstack-roots")
WHEELS = Path("/var/cache/socketstack-wheels")
# Bump when the way a root is built changes: every cached root is then rebuilt.
BUILDER_VERSION = 2
USER = "dev"
PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
# What the project needs on a server and for development (install.sh's
# packages, PostgreSQL, make/git/sudo for a checkout), and what a test uses
# (certbot, which install.sh installs for LETSENCRYPT_EMAIL, and Debian's pebble,
# the ACME test server: test_debian_lane_roles.py), and systemd's package, which
# every Debian server has and minbase lacks (PID 1 here is not systemd: the
# tests see install.sh's no-systemd path all the same, by /run/systemd/system).
PACKAGES = (
    "nginx",
    "libnginx-mod-http-brotli-static",
    "redis-server",
    "supervisor",
    "python3-venv",
    "openssl",
    "rsync",
    "curl",
    "ca-certificates",
    "postgresql",
    "make",
    "sudo",
    "git",
    "procps",
    "iproute2",
    "certbot",
    "pebble",
    "systemd",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def host_suite():
    """This machine's Debian release, by /etc/debian_version (12.x or 13.x)."""
    version = Path("/etc/debian_version").read_text().strip()
    major = version.split(".")[0]
    suites = {"12": "bookworm", "13": "trixie"}
    if major in suites:
        return suites[major]
    # A testing/sid machine says "trixie/sid" and the like.
    name = version.split("/")[0]
    if name in PYTHON:
        return name
    raise RuntimeError(f"/etc/debian_version: {version!r} is neither Debian 12 nor 13")


def other_suite():
    """The release the second lane runs in: trixie on a bookworm machine, bookworm on a trixie one."""
    return {"bookworm": "trixie", "trixie": "bookworm"}[host_suite()]


def mirror():
    """The Debian mirror this machine's apt uses (deb822 sources first, then sources.list)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for stanza in deb822.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
            suites = fields.get("Suites", "").split()
            if fields.get("URIs") and not any(s.endswith("-security") for s in suites):
                return fields["URIs"].split()[0]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[1]:
                return next(w for w in words[1:] if not w.startswith("["))
    return DEFAULT_MIRROR


def unavailable():
    """Why a root cannot be built or run here (one line), or None when it can."""
    if os.geteuid() != 0:
        return "the Debian lane needs root (debootstrap, chroot, namespaces): CI runs it as root"
    for tool in ("debootstrap", "unshare", "nsenter", "chroot", "mount"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            return f"{tool} is not installed (bootstrap.sh installs debootstrap with apt-get)"
    try:
        host_suite()
    except (OSError, RuntimeError) as exc:
        return str(exc)
    probe = subprocess.run(
        ["unshare", "--net", "--pid", "--mount", "--fork", "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        return f"unshare --net --pid --mount does not work here: {probe.stderr.strip()}"
    return None


# Building ---------------------------------------------------------------------


def require_lane():
    """The lane's tools and rights: a failure in CI, a skip on a laptop (like conftest's `require`)."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class Timings(dict):
    """Seconds per label, added up over the `with timings.timed(label):` blocks."""

    @contextlib.contextmanager
    def timed(self, label):
        started = time.monotonic()
        try:
            yield
        finally:
            self[label] = self.get(label, 0) + time.monotonic() - started


def root_key(suite, packages):
    text = json.dumps([suite, mirror(), sorted(packages), BUILDER_VERSION, platform.machine()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Locked:
    """An exclusive flock on a file: two test runs never build the same thing at once."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def build_root(suite, extra=()):
    """The pristine root of `suite` with PACKAGES (and `extra`): built once, then reused.

    Returns its path. Never modify it: run it through Namespace, which works
    on a copy.
    """
    packages = tuple(PACKAGES) + tuple(extra)
    final = ROOTS / f"{suite}-{root_key(suite, packages)}"
    if (final / ".socketstack-root").exists():
        (final / ".socketstack-root").touch()  # in use: prune_roots keeps it
        return final
    with Locked(ROOTS / f".{final.name}.lock"):
        if (final / ".socketstack-root").exists():  # another run built it meanwhile
            return final
        shutil.rmtree(final, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=ROOTS))
        # mkdtemp's 0700 would make the root's "/" closed to every user but
        # root (postgres, dev, the app users).
        building.chmod(0o755)
        try:
            debootstrap(suite, building)
            install_packages(building, packages)
            finish_root(building)
            (building / ".socketstack-root").write_text(json.dumps({"suite": suite, "packages": packages}) + "\n")
            building.rename(final)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    prune_roots()
    return final


def prune_roots(days=14):
    """Remove cached roots unused for `days` (an older package list or builder
    leaves its root behind, about 700 MB each)."""
    for stamp in ROOTS.glob("*-*/.socketstack-root"):
        if time.time() - stamp.stat().st_mtime > days * 86400:
            with Locked(ROOTS / f".{stamp.parent.name}.lock"):
                shutil.rmtree(stamp.parent, ignore_errors=True)


def checked(command, timeout=1200, **kwargs):
    """Run a build command; on failure raise with the end of its output."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(map(str, command))} exited {result.returncode}:\n{tail}")
    return result


def debootstrap(suite, target):
    # minbase: essential packages and apt only; the rest comes from apt-get below.
    keyring = Path(f"/usr/share/keyrings/debian-archive-{suite}-stable.gpg")
    command = ["debootstrap", "--variant=minbase"]
    if keyring.exists():
        command.append(f"--keyring={keyring}")
    checked([*command, suite, str(target), mirror()])


def in_build_chroot(target, *command, env=None):
    """A command in the root being built: chroot, in a private mount and PID
    namespace with its own /proc (apt's maintainer scripts look there), with
    the machine's network (apt downloads)."""
    environment = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
        **(env or {}),
    }
    return checked(
        ["unshare", "--mount", "--pid", "--fork", f"--mount-proc={target}/proc", "chroot", str(target), *command],
        env=environment,
    )


def install_packages(target, packages):
    # apt must not start services in the root (there is no init there): the
    # tests start what they need inside their namespace.
    policy = target / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# socketstack test root: apt starts no service here.\nexit 101\n")
    policy.chmod(0o755)
    shutil.copy("/etc/resolv.conf", target / "etc/resolv.conf")
    in_build_chroot(target, "apt-get", "update", "-qq")
    wanted = [p for p in packages if available(target, p)]
    in_build_chroot(target, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted)
    in_build_chroot(target, "apt-get", "clean")


def available(target, package):
    """Is the package known to the root's apt (certbot and the like may be missing)?"""
    result = subprocess.run(
        ["chroot", str(target), "apt-cache", "show", "--no-all-versions", package],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    return result.returncode == 0 and "Package:" in result.stdout


def finish_root(target):
    """What every root needs besides its packages: names, the normal user,
    PostgreSQL's cluster on Debian's default port."""
    (target / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    (target / "etc/hostname").write_text("socketstack-root\n")
    in_build_chroot(target, "useradd", "--create-home", "--shell", "/bin/bash", "--uid", "1000", USER)
    # Debian's default cluster, as a server has it, on Debian's port: the
    # postinst picks 5433 while the machine's own cluster holds 5432, and in
    # the namespace nothing else listens.
    for server in sorted(target.glob("usr/lib/postgresql/*/bin/postgres")):
        version = server.parent.parent.name
        conf = target / f"etc/postgresql/{version}/main/postgresql.conf"
        if not conf.exists():
            in_build_chroot(target, "pg_createcluster", "--port", "5432", version, "main")
        conf.write_text(re.sub(r"(?m)^port = \d+", "port = 5432", conf.read_text()))


# Wheels -------------------------------------------------------------------------


def wheelhouse(python, locks):
    """A directory with every wheel that the lock files `locks` pin, for
    CPython `python` ("3.11", "3.13") on this machine's architecture.

    Each lock is a baked project's, and its own `make wheelhouse` code
    (deploy/checkout.py wheelhouse, which judges the lock's markers for that
    Python) downloads it on the machine (the namespace has no network), every
    hash checked by pip; a lock already downloaded (same content) is skipped.
    In the root: WHEELHOUSE=<dir> for install.sh, PIP_NO_INDEX=1
    PIP_FIND_LINKS=<dir> for make venv.
    """
    house = WHEELS / python
    house.mkdir(parents=True, exist_ok=True)
    with Locked(WHEELS / f".{python}.lock"):
        for lock in map(Path, locks):
            stamp = house / f".lock-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
            if stamp.exists():
                continue
            checkout = lock.parent / "deploy" / "checkout.py"
            checked([sys.executable, checkout, "wheelhouse", house, python, platform.machine(), lock.name])
            stamp.touch()
    return house


# Running -------------------------------------------------------------------------

# PID 1 of the namespace: it sets up the root's mounts (the mount namespace is
# private: nothing of this shows outside), brings loopback up (with the
# machine's `ip`, else the root's: PACKAGES has iproute2, minbase has not),
# then becomes the reaper.
INIT = r"""
set -eu
root=$1 mode=$2 lower=$3 upper=$4 work=$5 python=$6 binds=$7 memory=$8
mount --make-rprivate /
if [ -n "$memory" ]; then
    # The overlay's writable half in memory: gone with the namespace.
    mount -t tmpfs -o "size=$memory,mode=0755" changes "$upper"
    mkdir "$upper/upper" "$upper/work"
    work=$upper/work upper=$upper/upper
fi
if [ "$mode" = overlay ]; then
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
fi
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t tmpfs -o mode=0755,size=1m dev "$root/dev"
for node in null zero full random urandom tty; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
mount -t tmpfs -o mode=0755 run "$root/run"
mkdir -m 1777 "$root/run/lock"
while IFS='|' read -r source inside; do
    [ -n "$source" ] || continue
    mkdir -p "$root$inside"
    mount --bind -o ro "$source" "$root$inside"
    mount -o remount,bind,ro "$root$inside"
done <<<"$binds"
if command -v ip >/dev/null; then ip link set lo up; else chroot "$root" ip link set lo up; fi
exec "$python" -c "$REAPER" "$root"
"""

REAPER = r"""
import os, signal, sys
os.chroot(sys.argv[1])
os.chdir("/")
def reap(*_):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
signal.signal(signal.SIGCHLD, reap)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
print("ready", flush=True)
while True:
    signal.pause()
"""

# Inside the root: a clean environment, Debian's PATH.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def overlay_works(scratch):
    """Can this machine mount an overlayfs with its upper directory in scratch?"""
    probe = Path(tempfile.mkdtemp(prefix="ovl-", dir=scratch))
    for name in ("lower", "upper", "work", "merged"):
        (probe / name).mkdir()
    options = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
    command = ["unshare", "--mount", "mount", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")]
    result = subprocess.run(command, capture_output=True, timeout=30)
    shutil.rmtree(probe, ignore_errors=True)
    return result.returncode == 0


class Namespace:
    """A disposable copy of a pristine root, running in its own network (loopback
    only), PID and mount namespaces. `binds` maps host directories to paths
    inside the root, mounted read-only (a wheelhouse, for example).

    memory="4g": the copy's changes live in a tmpfs of at most that size
    inside the namespace (overlay mode only), not in `scratch`: nothing to
    delete at stop(), which on a disk mounted with `discard` takes longer
    than the tests (tens of seconds for a few venvs)."""

    def __init__(self, pristine, scratch, binds=None, mode=None, memory=None):
        self.pristine = Path(pristine)
        self.scratch = Path(scratch)
        self.binds = dict(binds or {})
        self.mode = mode
        self.memory = memory
        self.process = None
        self.pid = None
        self.copy_seconds = None
        self.stop_seconds = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        self.scratch.mkdir(parents=True, exist_ok=True)
        if self.mode is None:
            self.mode = "overlay" if overlay_works(self.scratch) else "copy"
        self.root = self.scratch / "root"
        upper, work = self.scratch / "upper", self.scratch / "work"
        started = time.monotonic()
        if self.mode == "overlay":
            for path in (self.root, upper, work):
                path.mkdir()
        else:
            checked(["cp", "-a", "--reflink=auto", str(self.pristine), str(self.root)])
        self.copy_seconds = time.monotonic() - started
        binds = "\n".join(f"{source}|{inside}" for inside, source in self.binds.items())
        command = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child", "bash", "-c", INIT, "init"]
        memory = self.memory if self.mode == "overlay" and self.memory else ""
        command += [str(self.root), self.mode, str(self.pristine), str(upper), str(work), sys.executable, binds, memory]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**BASE_ENV, "REAPER": REAPER},
        )
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.wait(timeout=30)
            raise RuntimeError(f"the namespace did not start: {line}{self.process.stderr.read()}")
        self.pid = self.init_pid()
        # A test run that ends without stop() (an interrupted session) takes
        # the namespace down with it all the same.
        atexit.register(self.stop)
        return self

    def init_pid(self):
        """The machine's PID of the namespace's PID 1 (the child of unshare)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def stop(self):
        """Kill every process of the namespace (PID 1 first: the kernel kills the
        rest), which also drops its mounts; then remove the copy."""
        if self.process is None:
            return
        started = time.monotonic()
        if self.process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=60)
        self.process.stdout.close()
        self.process.stderr.close()
        self.process = None
        atexit.unregister(self.stop)
        killed = time.monotonic()
        for name in ("root", "upper", "work"):
            shutil.rmtree(self.scratch / name, ignore_errors=True)
        self.stop_seconds = {"kill": killed - started, "remove": time.monotonic() - killed}

    def processes(self):
        """(pid as the machine sees it, command line) of every process in the namespace but PID 1."""
        mine = os.readlink(f"/proc/{self.pid}/ns/pid")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            try:
                if os.readlink(entry / "ns/pid") != mine:
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            found.append((int(entry.name), cmdline))
        return found

    def run(self, command, user=None, env=None, cwd=None, check=True, timeout=600, input=None):
        """Run a command in the root: a string goes to bash -c, a list is an argv.

        As root, or as `user` (its HOME, USER, groups). Returns the
        CompletedProcess (text); with check, a non-zero exit raises
        AssertionError carrying the output.
        """
        argv = ["bash", "-c", command] if isinstance(command, str) else [str(part) for part in command]
        if cwd is not None:
            argv = ["bash", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv]
        environment = {**BASE_ENV, "HOME": "/root", "USER": "root", "LOGNAME": "root"}
        if user is not None:
            home = self.run(["getent", "passwd", user]).stdout.split(":")[5]
            environment.update(HOME=home, USER=user, LOGNAME=user)
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
        environment.update(env or {})
        words = [f"{key}={value}" for key, value in environment.items()]
        full = ["nsenter", f"--target={self.pid}", "--mount", "--net", "--pid", "--root", "--wd"]
        full += ["env", "-i", *words, *argv]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input, env=BASE_ENV)
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the {self.pristine.name} root{f' as {user}' if user else ''}: {command!r} exited "
                f"{result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
            )
        return result

    def path(self, inside):
        """A path inside the root as the machine sees it (through PID 1's root)."""
        return Path(f"/proc/{self.pid}/root") / str(inside).lstrip("/")

    def copy_in(self, src, dest, owner=None):
        """Copy a host file or directory to `dest` in the root (tar through a pipe);
        `owner` (a user of the root) gets it all."""
        src = Path(src)
        parent = str(Path(dest).parent)
        name = Path(dest).name
        staging = Path(tempfile.mkdtemp(prefix="copy-", dir=self.scratch))
        try:
            target = staging / name
            if src.is_dir():
                shutil.copytree(src, target, symlinks=True)
            else:
                shutil.copy2(src, target)
            packed = subprocess.run(["tar", "-C", str(staging), "-cf", "-", name], capture_output=True, check=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.run(["mkdir", "-p", parent])
        full = ["nsenter", f"--target={self.pid}", "--mount", "--pid", "--root", "--wd"]
        full += ["tar", "-C", parent, "--no-same-owner", "-xf", "-"]
        subprocess.run(full, input=packed.stdout, capture_output=True, check=True, env=BASE_ENV)
        if owner:
            self.run(["chown", "-R", f"{owner}:{owner}", str(dest)])
