"""Finish the generated project: prune, lock, .env, virtualenv, Redis check.

Runs inside the new project directory. Every step is a plain function so the
template's tests can import and call it. Environment variables:

  SOCKETSTACK_SKIP_VENV=1        do not create .venv (fast template tests)
  SOCKETSTACK_SKIP_REDIS_CHECK=1 do not look for Redis
  SOCKETSTACK_SYSTEM_REDIS_SOCKET=/path  the socket checked for redis=system

Under `cruft update` and `cruft diff`, cruft bakes the old and the new
template version into temporary directories (running this hook each time)
only to diff them: such a bake gets no .env, no .venv and no Redis check
(see is_cruft_scratch_bake).
"""

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SYSTEM_REDIS_SOCKET = "/run/redis/redis-server.sock"


def say(message):
    print(f"[socketstack] {message}", flush=True)


# (1) Files the options do not use ---------------------------------------


def remove_unused_files(project_dir, context):
    """Delete what the chosen options do not need; return the removed paths."""
    unused = []
    if context["redis"] == "system":
        # Debian's redis-server runs the single instance; no configs of ours.
        unused.append(project_dir / "deploy" / "redis")
    # Only the session store that SESSION_ENGINE names.
    other_engine = {"cache": "cached_db", "cached_db": "cache"}[context["session_engine"]]
    unused.append(project_dir / context["project_slug"] / "sessions" / f"{other_engine}.py")
    if context["database"] != "postgresql":
        unused.append(project_dir / "docs" / "postgresql.md")
    if not context["nginx_page_cache"]:
        # local.conf includes these only when the option is on.
        unused += [project_dir / "deploy" / "nginx" / name for name in ("page-cache-zone.conf", "page-cache.conf")]
        unused.append(project_dir / "docs" / "page-cache.md")
    unused = [path for path in unused if path.exists()]
    for path in unused:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return unused


# (1b) cruft's throwaway bakes -----------------------------------------------------


def is_cruft_scratch_bake(context, project_dir, tmp_root=None):
    """True for the bakes that `cruft update` / `cruft diff` make only to compute the template's diff.

    Two facts of cruft 2.16 together: it alone puts `_commit` in the context
    (plain cookiecutter puts `_output_dir` there instead), and for update/diff
    it generates into a fresh tempfile.TemporaryDirectory() (`<tmp>/tmp<8 random characters>/<slug>`,
    nothing else in it), where `cruft create` generates into the directory the
    user gave. Those bakes are diffed and deleted: a .venv, a new secret or a
    Redis probe there is wasted time, and a secret there would enter the diff.
    """
    if "_commit" not in context or "_output_dir" in context:
        return False
    parent = Path(project_dir).resolve().parent
    tmp_root = Path(tmp_root or tempfile.gettempdir()).resolve()
    fresh_tmp = parent.parent == tmp_root and re.fullmatch(r"tmp[a-z0-9_]{8}", parent.name) is not None
    return fresh_tmp and [p.name for p in parent.iterdir()] == [Path(project_dir).name]


# (2) Lock, .env and .venv: the project's own code (deploy/checkout.py) --------


def load_checkout(project_dir):
    """Import the generated deploy/checkout.py: `make env` and `make venv` run the same code."""
    spec = importlib.util.spec_from_file_location("checkout", project_dir / "deploy" / "checkout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use_lock_for(project_dir, django_version):
    """Keep the shipped lock files of the chosen Django version, drop the others."""
    locks = project_dir / "locks"
    for path in (locks / f"django-{django_version}").iterdir():
        path.replace(project_dir / path.name)
    shutil.rmtree(locks)


def write_env_file(project_dir):
    """Write .env (0600, a new key) unless one exists; return its path."""
    checkout = load_checkout(project_dir)
    try:
        return checkout.write_env(project_dir)
    except checkout.CheckoutError:
        return project_dir / ".env"


# (3) Virtualenv ---------------------------------------------------------------


def make_venv(project_dir, python):
    """Create .venv from requirements-dev.lock; return True on success."""
    checkout = load_checkout(project_dir)
    started = time.monotonic()
    try:
        checkout.make_venv(project_dir, python, shutil.which("uv"), say=say)
    except checkout.CheckoutError as exc:
        say(f"ERROR: {exc}")
        return False
    say(f"  .venv ready in {time.monotonic() - started:.1f} s")
    return True


# (4) Redis -----------------------------------------------------------------------


def redis_ping(path, timeout=1.0):
    """PING a Redis unix socket; return (ok, diagnosis)."""
    if not os.path.exists(path):
        return False, "missing"
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            reply = sock.recv(128)
    except PermissionError:
        return False, "permission"
    except OSError as exc:
        return False, f"error: {exc.strerror or exc}"
    if reply.startswith(b"+PONG"):
        return True, "ok"
    if reply.startswith(b"-NOAUTH"):
        return False, "auth"
    return False, "not-redis"


def redis_server_version(redis_server):
    out = subprocess.run([redis_server, "--version"], capture_output=True, text=True, timeout=10)
    for word in out.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return out.stdout.strip()


def try_redis_config(redis_server, config, timeout=10.0):
    """Start redis-server with `config` on a temporary socket, PING it, stop it."""
    with tempfile.TemporaryDirectory(prefix="socketstack-redis-") as tmp:
        sock = Path(tmp) / "check.sock"
        process = subprocess.Popen(
            [redis_server, str(config), "--unixsocket", str(sock), "--dir", tmp],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    output = process.stdout.read().strip().splitlines()
                    return False, output[-1] if output else f"exited with {process.returncode}"
                if redis_ping(sock)[0]:
                    return True, "PONG"
                time.sleep(0.05)
            return False, f"no answer within {timeout:.0f} s"
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
            process.stdout.close()


SYSTEM_FIXES = {
    "missing": "no socket at {path}. Run: sudo apt-get install redis-server, set `unixsocket {path}` and "
    "`unixsocketperm 770` in /etc/redis/redis.conf, then: sudo service redis-server restart",
    "permission": "permission denied on {path}. Run: sudo usermod -a -G redis $USER, then log in again "
    "(group membership is read at login)",
    "auth": "{path} wants a password (requirepass). Add it to the Redis URLs in .env",
    "not-redis": "{path} answers, but not as Redis. Check `unixsocket` in /etc/redis/redis.conf",
}


def check_redis(project_dir, context, system_socket=SYSTEM_REDIS_SOCKET):
    """Return (ok, lines): what was found and, when something is wrong, what to run."""
    redis_server = shutil.which("redis-server")
    if not redis_server:
        return False, ["redis-server is not installed. Run: sudo apt-get install redis-server"]
    lines = [f"redis-server {redis_server_version(redis_server)} at {redis_server}"]
    if context["redis"] == "dedicated":
        ok = True
        for config in sorted((project_dir / "deploy" / "redis").glob("*.conf")):
            started, detail = try_redis_config(redis_server, config)
            ok &= started
            if started:
                lines.append(f"deploy/redis/{config.name}: starts and answers PING")
            else:
                lines.append(f"deploy/redis/{config.name}: does not start here: {detail}")
        return ok, lines
    ok, diagnosis = redis_ping(system_socket)
    if ok:
        lines.append(f"system Redis answers on {system_socket}")
    else:
        fix = SYSTEM_FIXES.get(diagnosis, "{path}: " + diagnosis)
        lines.append(fix.format(path=system_socket))
    return ok, lines


# (5) Next steps --------------------------------------------------------------------


def next_steps(project_dir, context, venv_ok):
    steps = [f"cd {project_dir}"]
    if not venv_ok:
        steps.append("make venv        # create .venv with the locked versions")
    steps += [
        "make up          # Redis, gunicorn and nginx under supervisord",
        f"open http://127.0.0.1:{context['local_port']}/",
        "make test        # the project's tests against a real redis-server",
        "make help        # every other command",
    ]
    return steps


def main():
    context = json.loads(r"""{{ cookiecutter | jsonify }}""")
    project_dir = Path.cwd()
    removed = remove_unused_files(project_dir, context)
    for path in removed:
        say(f"Removed {path.relative_to(project_dir)} (not used with these options)")
    use_lock_for(project_dir, context["django_version"])
    if is_cruft_scratch_bake(context, project_dir):
        say("cruft's scratch bake for a diff: no .env, no .venv, no Redis check")
        return
    write_env_file(project_dir)
    say("Wrote .env (mode 0600) with a new SECRET_KEY: keep it out of version control")

    venv_ok = False
    if os.environ.get("SOCKETSTACK_SKIP_VENV") == "1":
        say("SOCKETSTACK_SKIP_VENV=1: no .venv created")
    else:
        venv_ok = make_venv(project_dir, context["python"])

    if os.environ.get("SOCKETSTACK_SKIP_REDIS_CHECK") == "1":
        say("SOCKETSTACK_SKIP_REDIS_CHECK=1: Redis not checked")
    else:
        system_socket = os.environ.get("SOCKETSTACK_SYSTEM_REDIS_SOCKET", SYSTEM_REDIS_SOCKET)
        _, lines = check_redis(project_dir, context, system_socket)
        for line in lines:
            say(f"Redis: {line}")

    say("Next steps:")
    for step in next_steps(project_dir, context, venv_ok):
        print(f"    {step}")


if __name__ == "__main__":
    main()
