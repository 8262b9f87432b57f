"""The second Debian lane: the project in a root filesystem of the other
release (trixie on a Debian 12 machine, bookworm on a Debian 13 one), built
with debootstrap and run in its own network (loopback only), PID and mount
namespaces (tests/debian_root.py).

Each combination is baked once on the machine, committed with git and cloned
inside the root, as a teammate or a server gets it: no .env, no .venv. The
root has no network: pip installs from a wheelhouse downloaded on the machine
(PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels). One root and one namespace serve the
whole module; the `make` tests run first (as the normal user `dev`), then the
install.sh tests (as root).

SOCKETSTACK_LANE_SUITE=bookworm|trixie runs the lane in that release instead
of the other one (to try both directions on one machine).
"""

import os
import re
import subprocess

import debian_root
import pytest
from conftest import bake


def lane_suite():
    """The release the lane runs in: SOCKETSTACK_LANE_SUITE, else the other one."""
    chosen = os.environ.get("SOCKETSTACK_LANE_SUITE")
    if chosen:
        if chosen not in debian_root.PYTHON:
            raise pytest.UsageError(
                f"SOCKETSTACK_LANE_SUITE={chosen!r} is not a release the lane knows: use bookworm or trixie"
            )
        return chosen
    try:
        return debian_root.other_suite()
    except (OSError, RuntimeError):
        return "trixie"  # not Debian: require_lane() fails or skips


SUITE = lane_suite()
PYTHON = debian_root.PYTHON[SUITE]
USER = debian_root.USER
ADMIN_PASSWORD = "lane-admin-Pa55word"
WHEELS = "/wheels"
# pip in the root: only the wheelhouse (WHEELHOUSE for install.sh once it knows it).
PIP_ENV = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# Each combination, baked once: name -> answers.
BAKES = {
    "default": {},
    # Not "pg_...": PostgreSQL refuses role names that begin with pg_.
    "postgresql-cached_db": {"project_name": "Lane Db", "database": "postgresql", "session_engine": "cached_db"},
    "django-6.1": {"project_name": "New Site", "django_version": "6.1"},
}
# install.sh's app users get uids that no user of this machine has: the
# machine sees the namespace's processes, and an uninstall.sh run on the
# machine (test_deploy) kills every process of its app user's uid, those in
# the root included (seen once: install.sh killed, exit 137). The upgrade
# test's root uses 45000-45999.
UID_RANGE = ("SYS_UID_MIN 46000", "SYS_UID_MAX 46999", "SYS_GID_MIN 46000", "SYS_GID_MAX 46999")
LOGIN_DEFS = ["sh", "-c", 'printf "%s\\n" "$@" >>/etc/login.defs', "sh", *UID_RANGE]
# Seconds of each phase, printed at the end of the module (pytest -s shows them).
TIMES = debian_root.Timings()
timed = TIMES.timed


def python_at_least(version, minimum):
    return tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))


def runs_django_61():
    """Can the root's own python3 run Django 6.1 (>= 3.12)? Not Debian 12's 3.11."""
    return python_at_least(PYTHON, "3.12")


def create_admin(lane, slug):
    """The site's admin, made as the app user the documented way (createsuperuser --noinput)."""
    lane.run(
        [f"/webapps/{slug}/.venv/bin/python", "manage.py", "createsuperuser", "--noinput"]
        + ["--username", "admin", "--email", "admin@example.com"],
        user=slug,
        cwd=f"/webapps/{slug}",
        env={"DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD},
    )


def git_commit(project):
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "Baked"]):
        subprocess.run([*git, *command], cwd=project, check=True, capture_output=True)


@pytest.fixture(scope="module")
def baked(cookies_session):
    """{name: (project, answers)}: each combination baked on the machine without a
    .venv (SOCKETSTACK_SKIP_VENV=1), and committed."""
    debian_root.require_lane()
    projects = {}
    with timed("bake + commit on the machine"):
        for name, answers in BAKES.items():
            answers = dict(answers)
            if answers.get("django_version", "5.2") == "5.2":
                # The default answer, not this machine's interpreter: the root has python3.
                answers.setdefault("python", "python3")
            project = bake(cookies_session, **answers)
            git_commit(project)
            projects[name] = (project, answers)
    return projects


@pytest.fixture(scope="module")
def lane(baked, tmp_path_factory):
    """The root, started, with every bake's repository in /srv/git/<name> (owned
    by dev) and in /root/git/<name> (owned by root), and the wheelhouse mounted
    read-only on /wheels. Two copies: git clones only a repository that the
    user who clones owns ("dubious ownership")."""
    with timed(f"root ({SUITE}): build or reuse"):
        pristine = debian_root.build_root(SUITE)
    locks = []
    for project, answers in baked.values():
        if answers.get("django_version") == "6.1" and not runs_django_61():
            continue  # no wheel of Django 6.1 for Python 3.11: that bake must be refused
        locks += [project / "requirements.lock", project / "requirements-dev.lock"]
    with timed(f"wheelhouse (Python {PYTHON}): download or reuse"):
        house = debian_root.wheelhouse(PYTHON, locks)
    # The copy's changes in memory (printed at the end): removing them from
    # disk took up to 48 s, longer than most tests.
    namespace = debian_root.Namespace(pristine, tmp_path_factory.mktemp("lane"), binds={WHEELS: house}, memory="6g")
    with timed("namespace start"):
        namespace.start()
    TIMES[f"copy of the root ({namespace.mode})"] = namespace.copy_seconds
    try:
        namespace.run(LOGIN_DEFS)
        for name, (project, _) in baked.items():
            namespace.copy_in(project, f"/srv/git/{name}", owner=USER)
            namespace.copy_in(project, f"/root/git/{name}")
        yield namespace
    finally:
        used = (namespace.run(["df", "-m", "--output=used", "/"], check=False).stdout.split() or ["?"])[-1]
        namespace.stop()
        TIMES["namespace stop: kill"] = namespace.stop_seconds["kill"]
        TIMES["namespace stop: remove the copy"] = namespace.stop_seconds["remove"]
        print(f"\nDebian lane ({SUITE}, Python {PYTHON}), seconds:")
        for label, seconds in TIMES.items():
            print(f"  {label:<60} {seconds:7.1f}")
        print(f"  the copy's changes in memory at the end: {used} MB")


def clone(lane, name, user=USER):
    """A fresh clone of the bake's repository: what a teammate or a server gets."""
    if user is None:
        source, target = f"/root/git/{name}", f"/root/{name}"
    else:
        source, target = f"/srv/git/{name}", f"/home/{user}/{name}"
    lane.run(["rm", "-rf", target], user=user)
    lane.run(["git", "clone", "-q", source, target], user=user)
    for absent in (".env", ".venv"):
        assert lane.run(["test", "-e", f"{target}/{absent}"], check=False).returncode != 0, f"{absent} was committed"
    return target


# Logging in with curl inside the root (the namespace's loopback is its own) ------


class Browser:
    """curl in the root with one cookie jar: the admin's login form and pages."""

    def __init__(self, lane, base, jar, domain=None, user=None):
        self.lane, self.base, self.jar, self.user = lane, base, jar, user
        self.resolve = ["--resolve", f"{domain}:443:127.0.0.1", "--resolve", f"{domain}:80:127.0.0.1"] if domain else []

    def request(self, path, *args):
        """(status, body, location) of one request, not followed."""
        command = ["curl", "-sS", "-k", "--max-time", "20", "-b", self.jar, "-c", self.jar, *self.resolve]
        command += ["-w", r"\n%{http_code} %{redirect_url}", *args, f"{self.base}{path}"]
        result = self.lane.run(command, user=self.user)
        body, _, last = result.stdout.rpartition("\n")
        status, _, location = last.partition(" ")
        return int(status), body, location

    def login(self, username="admin", password=ADMIN_PASSWORD):
        self.lane.run(["rm", "-f", self.jar], user=self.user)
        status, form, _ = self.request("/admin/login/?next=/admin/")
        assert status == 200, form[:500]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
        fields = {"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"}
        data = [arg for key, value in fields.items() for arg in ("--data-urlencode", f"{key}={value}")]
        status, body, location = self.request(
            "/admin/login/?next=/admin/", "-H", f"Referer: {self.base}/admin/login/", *data
        )
        assert status == 302 and location.endswith("/admin/"), f"login: {status} {location}\n{body[:500]}"
        assert self.logged_in()

    def logged_in(self):
        status, body, _ = self.request("/admin/")
        return status == 200 and "Log out" in body


# make, as a normal user ---------------------------------------------------------------


def as_dev(lane, checkout, command, timeout=600, check=True, env=None):
    return lane.run(command, user=USER, cwd=checkout, env={**PIP_ENV, **(env or {})}, timeout=timeout, check=check)


def leftover_processes(lane):
    """Every process of the namespace but its PID 1: killed, and returned."""
    found = lane.processes()
    for pid, _ in found:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return found


@pytest.mark.parametrize("name", list(BAKES))
def test_checkout_make_up_login_test_check_down(lane, baked, name):
    """As `dev`: clone, make venv (wheels only), make env, make up, admin login
    through nginx, make test, make check, make down, and no process left."""
    _, answers = baked[name]
    checkout = clone(lane, name)
    # The Makefile's interpreter is the bake's answer; the root's is python3
    # (`make venv PYTHON=...`, as the Makefile documents).
    venv = ["make", "--no-print-directory", "venv", "PYTHON=python3"]
    if answers.get("django_version") == "6.1" and not runs_django_61():
        result = as_dev(lane, checkout, venv, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        refusals = [line for line in output.splitlines() if "needs Python >= 3.12" in line]
        assert len(refusals) == 1, f"no one-line 'needs Python >= 3.12' refusal:\n{output}"
        assert lane.run(["test", "-e", f"{checkout}/.venv/bin/python"], check=False).returncode != 0
        return
    with timed(f"make venv ({name})"):
        as_dev(lane, checkout, venv)
    as_dev(lane, checkout, ["make", "--no-print-directory", "env"])
    try:  # a make up that fails half-way is taken down too
        with timed(f"make up ({name})"):
            as_dev(lane, checkout, ["make", "--no-print-directory", "up"])
        manage = [f"{checkout}/.venv/bin/python", "manage.py"]
        as_dev(
            lane,
            checkout,
            [*manage, "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"],
            env={"DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD},
        )
        port = re.search(r"(?m)^LOCAL_PORT=(\d+)$", lane.run(["cat", f"{checkout}/.env"]).stdout).group(1)
        Browser(lane, f"http://127.0.0.1:{port}", f"/tmp/jar-{name}", user=USER).login()
        with timed(f"make test ({name})"):
            as_dev(lane, checkout, ["make", "--no-print-directory", "test"], timeout=900)
        with timed(f"make check ({name})"):
            as_dev(lane, checkout, ["make", "--no-print-directory", "check"])
    finally:
        with timed(f"make down ({name})"):
            down = as_dev(lane, checkout, ["make", "--no-print-directory", "down"], check=False, timeout=120)
        left = leftover_processes(lane)
    assert down.returncode == 0, down.stdout + down.stderr
    assert left == [], f"processes left after make down: {left}"


# install.sh, as root ------------------------------------------------------------------

# Lines a successful install must never print.
FAILURE_LINE = re.compile(r"\b(FAILED|ERROR)\b")
INSTALLS = ["default", "postgresql-cached_db"]


def install(lane, checkout, label):
    """deploy/install.sh ROLE=single from the checkout, wheels only: exit 0.
    Returns the lines that say FAILED or ERROR (a successful run prints none):
    the caller asserts on them at the end, after the rest of its checks."""
    with timed(f"install.sh ({label})"):
        result = lane.run(
            ["deploy/install.sh"],
            cwd=checkout,
            env={**PIP_ENV, "ROLE": "single", "WHEELHOUSE": WHEELS},
            check=False,
            timeout=1200,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"install.sh ({label}) exited {result.returncode}\n{output}"
    return [f"install.sh ({label}): {line}" for line in output.splitlines() if FAILURE_LINE.search(line)]


def nginx_check(lane):
    result = lane.run(["nginx", "-t"], check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[warn]" not in output, output


def uninstall_leaves_nothing(lane, checkout, slug, postgresql):
    args = ["--purge-data"] if postgresql else []
    uid = lane.run(["id", "-u", slug]).stdout.strip()
    result = lane.run(["deploy/uninstall.sh", *args], cwd=checkout, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lane.run(["test", "-e", f"/webapps/{slug}"], check=False).returncode != 0, f"/webapps/{slug} is left"
    enabled = lane.run(["ls", "-A", "/etc/nginx/sites-enabled"]).stdout.split()
    assert enabled == ["default"], f"sites-enabled: {enabled}"
    confs = lane.run(["ls", "-A", "/etc/supervisor/conf.d"]).stdout.split()
    assert confs == [], f"supervisor conf.d: {confs}"
    assert lane.run(["getent", "passwd", slug], check=False).returncode != 0, f"user {slug} is left"
    owned = lane.run(["pgrep", "-a", "-U", uid], check=False).stdout.strip()
    assert owned == "", f"processes of {slug} are left:\n{owned}"
    if postgresql:
        role = lane.run(
            ["runuser", "-u", "postgres", "--", "psql", "-tAc", f"SELECT 1 FROM pg_roles WHERE rolname = '{slug}'"]
        ).stdout.strip()
        assert role == "", f"PostgreSQL role {slug} is left"


@pytest.mark.parametrize("name", INSTALLS)
def test_install_sh_single_login_reinstall_uninstall(lane, baked, name):
    """As root: install.sh (ROLE=single), https /healthz, admin login, a second
    install.sh that keeps the session, nginx -t without warning, and
    uninstall.sh leaving nothing."""
    project, answers = baked[name]
    slug, postgresql = project.name, answers.get("database") == "postgresql"
    domain = re.search(r'(?m)^DEFAULT_DOMAIN="?([^"\n]+)"?$', (project / "deploy/project.env").read_text()).group(1)
    checkout = clone(lane, name, user=None)
    uninstalled = False
    try:
        failures = install(lane, checkout, f"{name}, first")
        nginx_check(lane)
        browser = Browser(lane, f"https://{domain}", f"/root/jar-{name}", domain=domain)
        status, body, _ = browser.request("/healthz")
        assert status == 200, body[:500]
        create_admin(lane, slug)
        browser.login()
        failures += install(lane, checkout, f"{name}, second")
        nginx_check(lane)
        assert browser.logged_in(), "the second install.sh logged the admin out"
        with timed(f"uninstall.sh ({name})"):
            uninstalled = True
            uninstall_leaves_nothing(lane, checkout, slug, postgresql)
        assert failures == [], "successful installs printed:\n" + "\n".join(failures)
    finally:
        if not uninstalled:  # the next install starts from a clean root
            lane.run(["deploy/uninstall.sh", "--purge-data"], cwd=checkout, check=False, timeout=300)
