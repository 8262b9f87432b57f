"""The upgrade from Debian 12 to Debian 13 keeps the site: the generated
docs/upgrading-debian.md, tested.

A bookworm root (tests/debian_root.py, whatever this machine runs) with two
sites installed by deploy/install.sh (ROLE=single): `upg_cache`
(session_engine=cache: the sessions live only in the sessions Redis's
append-only file) and `upg_pg` (database=postgresql, session_engine=cached_db),
each with an admin logged in. One root holds both, so the upgrade is paid for
once. Then, each stage under a load of logged-in GETs of /admin/ (10 a second
per site, tests/site_load.py, from inside the namespace's network):

1. `apt full-upgrade` to trixie (the runbook's sources line, then apt with no
   network: the lists and packages were fetched on the machine beforehand);
2. a restart of nginx, Debian's redis-server, supervisor and PostgreSQL 15:
   the sites serve again and the admins are still logged in;
3. deploy/install.sh again: the site moves to Python 3.13 with no failed request;
4. the runbook's PostgreSQL commands (pg_upgradecluster 15 -> 17): still logged in;
5. `apt autoremove` (python3.11 and postgresql-15 go): no failed request.

Each stage's failed requests and seconds of error pages are printed at the end
(pytest -s) and written to upgrade-figures.json in the basetemp; the runbook
quotes them.

Cached between runs: the bookworm root (debian_root), the wheels (per Python),
and trixie's apt lists and packages for that root in
/var/cache/socketstack-upgrade/.
"""

import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import debian_root
import pytest
from conftest import bake

SITES = {
    "upg_cache": {"domain_name": "cache.upgrade.test", "session_engine": "cache"},
    "upg_pg": {"domain_name": "pg.upgrade.test", "database": "postgresql", "session_engine": "cached_db"},
}
ADMIN_PASSWORD = "upgrade-admin-" + "x7k2m9" * 2
SITE_LOAD = Path(__file__).with_name("site_load.py")
RATE = 10  # GETs a second per site: a steady trickle, enough to time an outage to 0.1 s
UPGRADES = Path("/var/cache/socketstack-upgrade")
# The runbook, as the baked project has it: the test runs its commands (its
# sources line also serves to fetch trixie's packages, so the lists match).
DOC = "docs/upgrading-debian.md"
# Every apt call: no question, the packaged config files where we changed none,
# and no fsync per file (dpkg's default costs minutes on a busy CI disk).
APT = (
    "DEBIAN_FRONTEND=noninteractive apt-get -y -q"
    " -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-unsafe-io"
)
FIGURES = {}
# What systemd does on a server: each service stopped, then started on the new
# binaries. The root has no systemd, so the init scripts do it.
RESTARTS = {
    "nginx": "service nginx restart",
    "redis-server": "service redis-server restart",
    # Debian's init script starts the new supervisord before the old one has
    # exited, and the new one then gives up: stop, wait, start (as systemd does).
    "supervisor": "pid=$(cat /run/supervisord.pid); service supervisor stop; "
    "while kill -0 $pid 2>/dev/null; do sleep 0.1; done; service supervisor start",
    "postgresql": "pg_ctlcluster 15 main restart",
}
# The app users get uids that no user of this machine has: the machine's own
# processes see the namespace's, and an uninstall.sh on the machine kills every
# process of its app user's uid (`pgrep -u`), those in the root included.
LOGIN_DEFS = (
    "printf 'SYS_UID_MIN 45000\\nSYS_UID_MAX 45999\\nSYS_GID_MIN 45000\\nSYS_GID_MAX 45999\\n' >>/etc/login.defs"
)


# The runbook's commands ---------------------------------------------------------------


def section(markdown, title):
    """The text under the heading that contains `title`, up to the next heading of its level or above."""
    lines = markdown.splitlines()
    for number, line in enumerate(lines):
        heading = re.match(r"(#+) (.*)", line)
        if heading and title in heading.group(2):
            level = len(heading.group(1))
            body = []
            for rest in lines[number + 1 :]:
                other = re.match(r"(#+) ", rest)
                if other and len(other.group(1)) <= level:
                    break
                body.append(rest)
            return "\n".join(body)
    raise AssertionError(f"{DOC} has no heading with {title!r}")


def commands(markdown, title):
    """The shell lines of the fenced blocks under a heading, as root runs them:
    without `sudo ` and without comments."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", section(markdown, title), re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s+# .*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(re.sub(r"^sudo ", "", line))
    assert found, f"{DOC}, {title!r}: no command"
    return found


# What the namespace cannot download ------------------------------------------------------


def wheels(python, lock):
    """The wheelhouse for `python`, with the wheels that a python_full_version
    marker selects for that release's own Python (3.11.2 on Debian 12: async-timeout).

    pip download judges those markers by the Python that runs it, not by
    --python-version, so they are fetched one by one here.
    """
    house = debian_root.wheelhouse(python, [lock])
    full = {"3.11": "3.11.2", "3.13": "3.13.5"}[python]
    for requirement in re.split(r"\n(?=\S)", lock.read_text()):
        marker = re.search(r";\s*(python_full_version\s*([<>=!]+)\s*'([\d.]+)')", requirement)
        name = re.match(r"([A-Za-z0-9_.-]+)==", requirement)
        if not marker or not name or not version_matches(full, marker.group(2), marker.group(3)):
            continue
        if list(house.glob(f"{name.group(1).replace('-', '_')}-*.whl")):
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as one:
            one.write(requirement.split(";")[0] + " " + " ".join(re.findall(r"--hash=\S+", requirement)) + "\n")
            one.flush()
            debian_root.checked(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "--require-hashes", "-r", one.name, "-d", str(house)]
            )  # fmt: skip
    return house


def version_matches(version, operator, other):
    a, b = (tuple(map(int, v.split("."))) for v in (version, other))
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[operator]


def trixie_packages(pristine, sources_line):
    """apt's lists and every .deb that `apt full-upgrade` of the pristine
    bookworm root to trixie needs, fetched once per root with the machine's
    network: {lists, archives} in /var/cache/socketstack-upgrade/<root>/.

    The pristine root is not touched: apt runs in an overlay of it, with its
    lists and package cache pointed at the cache directory.
    """
    target = UPGRADES / f"trixie-for-{pristine.name}"
    if (target / ".complete").exists():
        return target
    with debian_root.Locked(UPGRADES / f".{target.name}.lock"):
        if (target / ".complete").exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".trixie-", dir=UPGRADES))
        try:
            for name in ("lists/partial", "archives/partial", "ovl/upper", "ovl/work", "ovl/merged"):
                (work / name).mkdir(parents=True)
            dirs = "-o Dir::State::Lists=/mnt/trixie/lists -o Dir::Cache::Archives=/mnt/trixie/archives"
            apt = f"{sources_line} && apt-get -q {dirs} update && apt-get -q {dirs} -d -y full-upgrade"
            script = (
                'set -eu; m="$2/ovl/merged"; '
                'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/ovl/upper,workdir=$2/ovl/work" "$m"; '
                'mount -t proc proc "$m/proc"; mkdir -p "$m/mnt/trixie"; '
                'mount --bind "$2" "$m/mnt/trixie"; cp /etc/resolv.conf "$m/etc/resolv.conf"; '
                'chroot "$m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 bash -c "$3"'
            )
            debian_root.checked(
                ["unshare", "--mount", "--pid", "--fork", "bash", "-c", script, "fetch", str(pristine), str(work), apt]
            )
            (work / "archives" / "lock").unlink(missing_ok=True)
            (work / "lists" / "lock").unlink(missing_ok=True)
            shutil.rmtree(work / "ovl")
            (work / ".complete").touch()
            work.chmod(0o755)
            work.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


# The load and its figures --------------------------------------------------------------


def in_netns(ns, *args, timeout=60):
    """The machine's Python with site_load.py, in the namespace's network only."""
    command = ["nsenter", f"--target={ns.pid}", "--net", sys.executable, str(SITE_LOAD), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


class Site:
    def __init__(self, ns, slug, project, answers):
        self.ns = ns
        self.slug = slug
        self.project = project
        self.domain = answers["domain_name"]
        self.sessionid = None

    @property
    def cafile(self):
        return self.ns.path(f"/etc/ssl/socketstack/{self.domain}/fullchain.pem")

    def spec(self):
        return f"{self.domain},{self.cafile},{self.sessionid}"

    def status(self):
        """GET /admin/ with the admin's session: 200 logged in, 302 logged out, 50x an error page."""
        code = "import site_load, sys; print(site_load.probe(*sys.argv[1:]))"
        command = ["nsenter", f"--target={self.ns.pid}", "--net", sys.executable, "-c", code,
                   self.domain, str(self.cafile), self.sessionid]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=SITE_LOAD.parent)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)


def outages(results):
    """[(start, seconds)] of each stretch of non-200 answers: from the first
    failed request to the next answered one (or the last failed one)."""
    found, start, last = [], None, None
    for _, at, status in results:
        if status != 200 and start is None:
            start = at
        elif status == 200 and start is not None:
            found.append((start, at - start))
            start = None
        last = at
    if start is not None:
        found.append((start, last - start))
    return found


class Stage:
    """One stage under load: the load starts, a second passes, the actions
    run (each timed), two seconds pass, the load stops; then the figures."""

    def __init__(self, label, sites, workdir):
        self.label = label
        self.sites = sites
        self.stop_file = workdir / f"stop-{len(FIGURES)}"
        self.marks = []

    def __enter__(self):
        ns = self.sites[0].ns
        command = ["nsenter", f"--target={ns.pid}", "--net", sys.executable, str(SITE_LOAD), "load",
                   str(self.stop_file), str(RATE), *(site.spec() for site in self.sites)]  # fmt: skip
        self.load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        self.started = time.monotonic()
        return self

    def run(self, label, action):
        started = time.monotonic()
        try:
            return action()
        finally:
            self.marks.append((label, started - self.started, time.monotonic() - self.started))

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.started
        time.sleep(2)
        self.stop_file.touch()
        out, err = self.load.communicate(timeout=60)
        assert self.load.returncode == 0, err
        results = json.loads(out)
        figures = {
            "seconds": round(self.seconds, 1),
            "actions": [[a, round(b, 1), round(c, 1)] for a, b, c in self.marks],
        }
        for site in self.sites:
            mine = sorted((r for r in results if r[0] == site.domain), key=lambda r: r[1])
            failed = [r for r in mine if r[2] != 200]
            windows = outages(mine)
            figures[site.slug] = {
                "requests": len(mine),
                "failed": len(failed),
                "statuses": dict(collections.Counter(str(r[2]) for r in failed)),
                "error_seconds": round(sum(seconds for _, seconds in windows), 1),
                "outages": [
                    [round(start - self.started, 1), round(seconds, 1), utc(start)] for start, seconds in windows
                ],
            }
        FIGURES[self.label] = figures
        return False


# Failed requests in a stage that should have none: noted, and the test goes
# on, so that one run gives every stage's figures; it fails at the end.
PROBLEMS = []


def no_failed_request(stage, site):
    figures = FIGURES[stage.label][site.slug]
    if figures["failed"]:
        PROBLEMS.append(f"{stage.label}: {site.slug}: {figures}")


def utc(monotonic):
    """A monotonic time as the UTC clock time, to find it in dpkg.log and the sites' logs."""
    return time.strftime("%H:%M:%S", time.gmtime(time.time() - time.monotonic() + monotonic))


def keep_logs(ns, workdir):
    """The sites', nginx's, supervisor's and dpkg's logs, copied out before the root goes."""
    target = workdir / "logs"
    for inside in [*(f"/webapps/{slug}/logs" for slug in SITES), "/var/log/nginx", "/var/log/supervisor",
                   "/var/log/postgresql", "/var/log/dpkg.log"]:  # fmt: skip
        source = ns.path(inside)
        destination = target / inside.strip("/").replace("/", "_")
        try:
            if source.is_dir():
                shutil.copytree(source, destination, dirs_exist_ok=True)
            elif source.exists():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
        except OSError as error:
            print(f"logs: {inside} not copied: {error}")


def print_figures(workdir):
    (workdir / "upgrade-figures.json").write_text(json.dumps(FIGURES, indent=1) + "\n")
    print("\nDebian 12 -> 13 upgrade, under 10 logged-in GETs a second per site:")
    for label, figures in FIGURES.items():
        if "seconds" not in figures:
            print(f"  {label}: {figures}")
            continue
        print(f"  {label} ({figures['seconds']} s; {figures['actions']})")
        for slug in SITES:
            if slug in figures:
                f = figures[slug]
                print(
                    f"    {slug}: {f['failed']} of {f['requests']} requests without a 200 {f['statuses'] or ''}, "
                    f"{f['error_seconds']} s of error pages {f['outages'] or ''}"
                )


# The sites ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upgrade_root(cookies_session, tmp_path_factory):
    """The bookworm root, started, with both sites installed and an admin logged in on each."""
    debian_root.require_lane()
    workdir = tmp_path_factory.mktemp("upgrade")
    started = time.monotonic()
    projects = {
        slug: bake(cookies_session, project_slug=slug, python="python3", **answers) for slug, answers in SITES.items()
    }
    lock = projects["upg_pg"] / "requirements.lock"
    assert lock.read_text() == (projects["upg_cache"] / "requirements.lock").read_text()
    pristine = debian_root.build_root("bookworm")
    FIGURES["prepare"] = {"root": round(time.monotonic() - started, 1)}
    houses = {python: wheels(python, lock) for python in ("3.11", "3.13")}
    FIGURES["prepare"]["wheels"] = round(time.monotonic() - started, 1)
    doc = (projects["upg_pg"] / DOC).read_text()
    trixie = trixie_packages(pristine, commands(doc, "Point apt at Debian 13")[0])
    FIGURES["prepare"]["trixie packages"] = round(time.monotonic() - started, 1)
    binds = {"/wheels/3.11": houses["3.11"], "/wheels/3.13": houses["3.13"], "/mnt/trixie": trixie}
    # The copy's changes (about 1.5 GB: the whole upgrade) in memory: removing
    # them from disk took 35 s.
    ns = debian_root.Namespace(pristine, workdir / "ns", binds=binds, memory="4g")
    ns.start()
    try:
        ns.run(LOGIN_DEFS)
        sites = []
        for slug, answers in SITES.items():
            ns.copy_in(projects[slug], f"/root/{slug}")
            site = Site(ns, slug, projects[slug], answers)
            first = install(site, "3.11")
            assert first.returncode == 0, first.stdout + first.stderr
            admin = f"DJANGO_SUPERUSER_PASSWORD={ADMIN_PASSWORD} .venv/bin/python manage.py createsuperuser"
            admin += " --noinput --username admin --email admin@example.com"
            ns.run(f"cd /webapps/{slug} && runuser -u {slug} -- env {admin}")
            login = in_netns(ns, "login", site.domain, site.cafile, "admin", ADMIN_PASSWORD)
            assert login.returncode == 0, login.stderr
            site.sessionid = login.stdout.strip()
            sites.append(site)
        FIGURES["prepare"]["sites installed"] = round(time.monotonic() - started, 1)
        yield ns, sites, doc, workdir
    finally:
        keep_logs(ns, workdir)
        ns.stop()
        FIGURES["teardown"] = {key: round(seconds, 1) for key, seconds in (ns.stop_seconds or {}).items()}
        print_figures(workdir)


def install(site, python):
    """deploy/install.sh from the checkout in /root/<slug>, the wheels of `python` only."""
    env = {"WHEELHOUSE": f"/wheels/{python}"}
    return site.ns.run("deploy/install.sh", cwd=f"/root/{site.slug}", env=env, check=False, timeout=900)


def venv_python(ns, slug):
    return ns.run(f"/webapps/{slug}/.venv/bin/python --version").stdout.strip()


# The upgrade ---------------------------------------------------------------------------------


def test_the_upgrade_keeps_the_sites_and_the_sessions(upgrade_root):
    ns, sites, doc, workdir = upgrade_root
    cache_site, pg_site = sites
    for site in sites:
        assert site.status() == 200, f"{site.slug}: not logged in before the upgrade"
        assert venv_python(ns, site.slug).startswith("Python 3.11"), site.slug
        # The runbook's check before the upgrade: the versioned interpreter, which Debian 13 keeps.
        made_by = ns.run(f"grep ^command /webapps/{site.slug}/.venv/pyvenv.cfg").stdout
        assert "/usr/bin/python3.11 " in made_by, f"{site.slug}: {made_by}"

    # 1. apt full-upgrade: the packages change under the running site.
    with Stage("apt full-upgrade", sites, workdir) as stage:
        for line in commands(doc, "Point apt at Debian 13"):
            stage.run("sources", lambda line=line: ns.run(line))
        # `apt update` needs the network: the lists fetched beforehand take its place.
        lists = "cp -a /mnt/trixie/lists/. /var/lib/apt/lists/"
        stage.run("lists", lambda: ns.run(f"{lists} && cp /mnt/trixie/archives/*.deb /var/cache/apt/archives/"))
        stage.run("full-upgrade", lambda: ns.run(f"{APT} full-upgrade", timeout=1800))
    assert ns.run("python3 --version").stdout.startswith("Python 3.13")
    assert ns.run("test -x /usr/bin/python3.11", check=False).returncode == 0, "python3.11 went with the upgrade"
    # Debian 13's postgresql-common makes no 17/main beside an existing cluster.
    clusters = ns.run("pg_lsclusters -h").stdout.split("\n")
    assert [line.split()[:4] for line in clusters if line] == [["15", "main", "5432", "online"]]
    for site in sites:
        no_failed_request(stage, site)

    # 2. The services restart on the new packages (a real server's apt or reboot does this).
    with Stage("restart of the services", sites, workdir) as stage:
        for name, command in RESTARTS.items():
            stage.run(name, lambda command=command: ns.run(command))
        stage.run("serving again", lambda: wait_serving(sites))
    for site in sites:
        assert site.status() == 200, f"{site.slug}: not serving, or logged out, after the restart"
    redis = ns.run("redis-cli -s /webapps/upg_cache/run/redis-sessions.sock info server").stdout
    assert "redis_version:8." in redis, "the sessions Redis did not restart on Redis 8"

    # 3. install.sh again: the sites move to Python 3.13, no request fails.
    with Stage("install.sh (to Python 3.13)", sites, workdir) as stage:
        for site in sites:
            result = stage.run(site.slug, lambda site=site: install(site, "3.13"))
            output = result.stdout + result.stderr
            assert result.returncode == 0 and "FAILED" not in output, output[-6000:]
    for site in sites:
        assert venv_python(ns, site.slug).startswith("Python 3.13"), site.slug
        no_failed_request(stage, site)
        assert site.status() == 200, f"{site.slug}: logged out by the switch to Python 3.13"

    # 4. PostgreSQL 15 -> 17, the runbook's commands.
    with Stage("pg_upgradecluster", sites, workdir) as stage:
        for line in commands(doc, "Or upgrade the cluster to PostgreSQL 17"):
            stage.run(line, lambda line=line: ns.run(line, timeout=900))
    clusters = ns.run("pg_lsclusters -h").stdout.split("\n")
    assert [line.split()[:4] for line in clusters if line] == [["17", "main", "5432", "online"]]
    sessions = ns.run(
        ["runuser", "-u", "postgres", "--", "psql", "-At", "-d", "upg_pg", "-c", "SELECT count(*) FROM django_session"],
        cwd="/",
    )
    assert int(sessions.stdout) >= 1, "the session rows did not reach PostgreSQL 17"
    no_failed_request(stage, cache_site)
    for site in sites:
        assert site.status() == 200, f"{site.slug}: logged out by the cluster upgrade"

    # 5. apt autoremove: python3.11 and postgresql-15 go, the sites stay.
    with Stage("apt autoremove", sites, workdir) as stage:
        for line in commands(doc, "Remove what Debian 12 left"):
            stage.run(line, lambda line=line: ns.run(f"{APT} {line.removeprefix('apt ')}", timeout=900))
    assert ns.run("test -e /usr/bin/python3.11", check=False).returncode != 0, "python3.11 is still installed"
    for site in sites:
        no_failed_request(stage, site)
        assert site.status() == 200, f"{site.slug}: logged out after autoremove"
    assert PROBLEMS == [], "requests failed where none should:\n" + "\n".join(PROBLEMS)


def wait_serving(sites, timeout=60):
    """Until every site answers 200 again (or the timeout): the restart's outage ends here."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(site.status() == 200 for site in sites):
            return
        time.sleep(0.2)
