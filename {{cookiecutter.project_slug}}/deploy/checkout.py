"""What a checkout needs besides its code: a .venv from the lock, a local .env.

    python3 deploy/checkout.py venv [PYTHON]  .venv with the locked versions  (make venv)
    python3 deploy/checkout.py env            a fresh local .env               (make env)
    python3 deploy/checkout.py check-lock     do the locks match pyproject.toml?
    python3 deploy/checkout.py lock           resolve the locks again with uv  (make lock)
    python3 deploy/checkout.py wheelhouse DIR [PYTHON_VERSION [MACHINE [LOCK]]]
                                              download the locked wheels   (make wheelhouse)
    python3 deploy/checkout.py check-wheelhouse DIR
                                              does DIR hold every locked file this Python needs?

Standard library only: it runs before any virtualenv exists. The post-gen
hook calls the same functions, and deploy/install.sh runs check-lock before
it changes anything on the server.

The locks are pip requirements files with a hash for every file:
requirements.lock (what the server runs) and requirements-dev.lock (the same
pins plus the test tools: what .venv and CI run). pip and uv both install
them, and each records the dependency part of pyproject.toml it was made from.
"""

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "{{ cookiecutter.domain_name }}"
LOCAL_PORT = "{{ cookiecutter.local_port }}"
LOCK = "requirements.lock"
DEV_LOCK = "requirements-dev.lock"
MARK = "# pyproject.toml dependencies sha256: "


class CheckoutError(Exception):
    """A failure whose message names the file and the fix."""


# .env -------------------------------------------------------------------------


def new_secret_key():
    # 50+ characters from `secrets`, and never the django-insecure- prefix.
    return secrets.token_urlsafe(60)


def env_text(secret_key, domain=DOMAIN, port=LOCAL_PORT):
    # No paths: settings.py derives the sockets from where the project is,
    # so the folder can be moved or cloned anywhere.
    return "\n".join(
        [
            "# The local stack's settings, written by `make env`. Never commit this file:",
            "# the server gets its own from deploy/install.sh.",
            f"DJANGO_SECRET_KEY={secret_key}",
            "DJANGO_DEBUG=false",
            "# No TLS on 127.0.0.1: no SSL redirect, no Secure cookies, no HSTS.",
            "SITE_HTTPS=false",
            f"DJANGO_ALLOWED_HOSTS=127.0.0.1,localhost,{domain}",
            f"LOCAL_PORT={port}",
            "",
        ]
    )


def write_env(root=ROOT):
    """Create .env (mode 0600, a new key); an existing one is never touched."""
    path = Path(root) / ".env"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CheckoutError(
            f"{path}: exists, kept as it is. Delete it first for a new one (a new key ends every session)."
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(env_text(new_secret_key()))
    return path


# Locks --------------------------------------------------------------------------


def read_toml(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip carries the same parser
        from pip._vendor import tomli as tomllib
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def dependencies_digest(root=ROOT):
    """sha256 of the part of pyproject.toml that decides what gets installed."""
    project = read_toml(Path(root) / "pyproject.toml")["project"]
    keys = ("requires-python", "dependencies", "optional-dependencies")
    wanted = {key: project.get(key) for key in keys}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def lock_digest(path):
    for line in path.read_text().splitlines():
        if line.startswith(MARK):
            return line[len(MARK) :].strip()
    return None


def check_lock(root=ROOT):
    """Raise CheckoutError naming the first lock file that is missing or stale."""
    root = Path(root)
    digest = dependencies_digest(root)
    for name in (LOCK, DEV_LOCK):
        path = root / name
        if not path.is_file():
            raise CheckoutError(f"{name}: missing. Run `make lock` and commit it.")
        if lock_digest(path) != digest:
            raise CheckoutError(
                f"{name}: does not match the dependencies in pyproject.toml. "
                "Run `make lock`, test, and commit both lock files."
            )


def pins(path):
    """{name: 'name==version ; marker'} of a lock file, without hashes."""
    found = {}
    for line in Path(path).read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")):
            requirement = line.rstrip(" \\")
            found.setdefault(re.split(r"[=;\s]", requirement, maxsplit=1)[0].lower(), []).append(requirement)
    return found


def ruff_pin(root=ROOT):
    versions = [req.split("==")[1].split()[0] for req in pins(Path(root) / DEV_LOCK).get("ruff", [])]
    return versions[0] if versions else None


def sync_pre_commit(root=ROOT):
    """Give the pre-commit ruff hook the locked ruff version."""
    path = Path(root) / ".pre-commit-config.yaml"
    version = ruff_pin(root)
    if path.is_file() and version:
        text = re.sub(r"(ruff-pre-commit\s*\n\s*rev: )v\S+", rf"\g<1>v{version}", path.read_text())
        path.write_text(text)


def find_uv(root=ROOT):
    return shutil.which("uv") or next(
        (str(path) for path in [Path(root) / ".venv" / "bin" / "uv"] if os.access(path, os.X_OK)), None
    )


def min_python(root=ROOT):
    """The X.Y of pyproject.toml's requires-python."""
    return re.search(r"\d+\.\d+", read_toml(Path(root) / "pyproject.toml")["project"]["requires-python"]).group()


def check_interpreter(interpreter, root=ROOT):
    """Raise CheckoutError when interpreter is missing or older than requires-python."""
    minimum = min_python(root)
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    try:
        found = subprocess.run([interpreter, "-c", code], capture_output=True, text=True).stdout.strip()
    except OSError:
        found = ""
    if not found:
        raise CheckoutError(f"make venv: PYTHON={interpreter} does not run: give a python{minimum} or newer.")
    if tuple(map(int, found.split("."))) < tuple(map(int, minimum.split("."))):
        raise CheckoutError(
            f"make venv: PYTHON={interpreter} is Python {found}, and this project needs Python >= {minimum} "
            f"(requires-python in pyproject.toml): make venv PYTHON=python{minimum} (Debian 13's python3 is 3.13; "
            f"elsewhere `uv python install {minimum}` or pyenv)."
        )


def lock(root=ROOT, uv=None):
    """Resolve both locks again: the newest versions that pyproject.toml allows."""
    root = Path(root)
    uv = uv or find_uv(root)
    if not uv:
        raise CheckoutError("make lock: needs uv: run `make venv` (it installs uv into .venv) or put uv on PATH.")
    minimum = min_python(root)
    header = (
        "# Written by `make lock` (deploy/checkout.py): do not edit. Every Python >= "
        f"{minimum}, every file hashed.\n{MARK}{dependencies_digest(root)}\n"
    )
    # One resolution for everything; the server's lock takes the same pins.
    common = [uv, "pip", "compile", "--quiet", "--universal", "--python-version", minimum]
    common += ["--generate-hashes", "--no-header", "--no-annotate", "pyproject.toml"]
    with tempfile.TemporaryDirectory() as tmp:
        dev, runtime, constraints = (Path(tmp) / name for name in ("dev", "runtime", "constraints"))
        subprocess.run([*common, "--extra", "dev", "-o", dev], cwd=root, check=True)
        constraints.write_text("\n".join(req for reqs in pins(dev).values() for req in reqs) + "\n")
        subprocess.run([*common, "--constraints", constraints, "-o", runtime], cwd=root, check=True)
        for source, name in ((dev, DEV_LOCK), (runtime, LOCK)):
            (root / name).write_text(header + source.read_text())
    sync_pre_commit(root)
    return [root / LOCK, root / DEV_LOCK]


# .venv ------------------------------------------------------------------------


def venv_commands(root, python, uv=None):
    """The commands that make .venv and install requirements-dev.lock into it."""
    venv = Path(root) / ".venv"
    venv_python = str(venv / "bin" / "python")
    lock_file = str(Path(root) / DEV_LOCK)
    if uv:
        # --relocatable: the scripts in .venv/bin keep working when the folder
        # moves. --compile-bytecode: without .pyc files each gunicorn worker
        # takes seconds to boot (PYTHONDONTWRITEBYTECODE may be set).
        return [
            [uv, "venv", "--quiet", "--relocatable", "--python", python, str(venv)],
            [uv, "pip", "install", "--quiet", "--compile-bytecode", "--require-hashes", "--python", venv_python]
            + ["-r", lock_file],
        ]
    return [
        [python, "-m", "venv", str(venv)],
        [venv_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--require-hashes"]
        + ["-r", lock_file],
    ]


# Wheelhouse: installs with no index (firewalled servers, the tests' roots) -----

# The platforms of PyPI's Linux wheels that Debian 12 (glibc 2.36) and 13 (2.41) run.
MANYLINUX = ("manylinux2014", "manylinux_2_17", "manylinux_2_28", "manylinux_2_34")
MARKER_ATOM = re.compile(r"(\w+) *(<=|>=|==|!=|<|>) *'([^']*)'")


def marker_applies(marker, python_version=None):
    """Evaluate the simple markers uv writes into the locks (python_full_version
    compared with a version, implementation_name, sys_platform), joined by
    `and`/`or`, for this interpreter or python_version ("3.13.5")."""
    full = python_version or ".".join(map(str, sys.version_info[:3]))
    values = {
        "python_full_version": full,
        "python_version": ".".join(full.split(".")[:2]),
        "implementation_name": sys.implementation.name,
        "sys_platform": sys.platform,
    }

    def version(text):
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])

    def atom(text):
        match = MARKER_ATOM.fullmatch(text.strip().strip("()"))
        if not match or match.group(1) not in values:
            return True  # a marker we cannot judge: keep the requirement
        name, op, want = match.groups()
        have = values[name]
        if name.startswith("python"):
            have, want = version(have), version(want)
        return {"<": have < want, "<=": have <= want, ">": have > want, ">=": have >= want,
                "==": have == want, "!=": have != want}[op]  # fmt: skip

    return any(all(atom(part) for part in branch.split(" and ")) for branch in marker.split(" or "))


def locked_files(path, python_version=None):
    """[(requirement, {sha256, ...})] of a lock file, for the markers that apply."""
    found, requirement = [], None
    for line in Path(path).read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")):
            pin, _, marker = line.rstrip(" \\").partition(";")
            requirement = (pin.strip(), set()) if not marker or marker_applies(marker, python_version) else None
            if requirement:
                found.append(requirement)
        elif requirement and "--hash=sha256:" in line:
            requirement[1].add(line.split("--hash=sha256:")[1].split()[0])
    return found


def check_wheelhouse(directory, root=ROOT, lock_name=LOCK):
    """Raise CheckoutError naming the first locked file that DIR lacks."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckoutError(f"WHEELHOUSE={directory}: no such directory. Run `make wheelhouse`, copy it here.")
    have = {hashlib.sha256(path.read_bytes()).hexdigest() for path in directory.iterdir() if path.is_file()}
    for requirement, hashes in locked_files(Path(root) / lock_name):
        if not hashes & have:
            python = ".".join(map(str, sys.version_info[:3]))
            raise CheckoutError(
                f"WHEELHOUSE={directory}: lacks {requirement} ({lock_name}) for Python {python}: "
                f"run `make wheelhouse SERVER_PYTHON={python}` and copy the wheelhouse here again."
            )


def wheelhouse_command(pip, requirements, directory, python_version, machine):
    """pip download of every wheel in requirements for that Python and machine, hashes checked."""
    platforms = [arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{machine}")]
    return [*pip, "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--no-deps", "--implementation", "cp", "--python-version", python_version,
            *platforms, "--require-hashes", "-r", str(requirements), "-d", str(directory)]  # fmt: skip


def write_wheelhouse(directory, python_version=None, machine=None, lock_name=None):
    """Download the wheels of a lock into directory; returns what it downloaded for."""
    python_version = python_version or ".".join(map(str, sys.version_info[:3]))
    machine = machine or os.uname().machine
    Path(directory).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        pip = [sys.executable, "-m", "pip"]
        if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
            # Debian's python3 has no pip of its own (a .venv made by uv neither): borrow a venv's.
            subprocess.run([sys.executable, "-m", "venv", f"{scratch}/venv"], check=True)
            pip = [f"{scratch}/venv/bin/python", "-m", "pip"]
        # The markers judged for the server's Python here: pip judges
        # python_full_version by the Python it runs on, whatever
        # --python-version says (Debian 12's 3.11.2 needs async-timeout).
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(
            "".join(
                f"{pin} {' '.join(f'--hash=sha256:{digest}' for digest in sorted(hashes))}\n"
                for pin, hashes in locked_files(ROOT / (lock_name or LOCK), python_version)
            )
        )
        subprocess.run(wheelhouse_command(pip, requirements, directory, python_version, machine), check=True)
    return f"the wheels of {lock_name or LOCK} for Python {python_version} on {machine}"


def make_venv(root=ROOT, python=None, uv=None, say=print):
    """Check the lock, then make .venv with it; raise CheckoutError on failure."""
    check_lock(root)
    interpreter = shutil.which(python or "python3") or python
    # Before anything is made: pip would otherwise leave a .venv that cannot
    # install the locked Django (6.1 needs 3.12).
    check_interpreter(interpreter, root)
    commands = venv_commands(root, interpreter, uv)
    if (Path(root) / ".venv" / "bin" / "python").exists():
        commands = commands[1:]  # keep it: install the locked versions into it
        say(f"Installing {DEV_LOCK} into the existing .venv ({'uv' if uv else 'pip'})")
    else:
        say(f"Creating .venv with {interpreter} from {DEV_LOCK} ({'uv' if uv else 'venv + pip'})")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    for step, command in enumerate(commands, 1):
        say(f"  step {step}/{len(commands)}: {' '.join(map(str, command))}")
        result = subprocess.run(command, cwd=root, env=env)
        if result.returncode != 0:
            raise CheckoutError(
                f".venv: step {step} failed (exit {result.returncode}). Fix the error above, then `make venv`."
            )


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    try:
        if command == "env":
            print(f"Wrote {write_env()} (mode 0600, a new secret key). Keep it out of version control.")
        elif command == "check-lock":
            check_lock()
            print(f"{LOCK} and {DEV_LOCK} match pyproject.toml")
        elif command == "lock":
            for path in lock():
                print(f"Wrote {path.name}")
        elif command == "check-wheelhouse" and len(argv) == 3:
            check_wheelhouse(argv[2])
        elif command == "wheelhouse" and 3 <= len(argv) <= 6:
            print(f"Wrote {argv[2]}: {write_wheelhouse(*argv[2:])}")
        elif command == "venv":
            python = argv[2] if len(argv) > 2 else "python3"
            make_venv(python=python, uv=find_uv() if not os.environ.get("SOCKETSTACK_NO_UV") else None)
        else:
            sys.exit(
                f"usage: {argv[0]} venv [PYTHON] | env | check-lock | lock"
                " | wheelhouse DIR [PYTHON_VERSION [MACHINE [LOCK]]] | check-wheelhouse DIR"
            )
    except CheckoutError as exc:
        sys.exit(str(exc))
    except subprocess.CalledProcessError as exc:
        sys.exit(f"{command}: `{' '.join(map(str, exc.cmd))}` failed with exit code {exc.returncode}")


if __name__ == "__main__":
    main(sys.argv)
