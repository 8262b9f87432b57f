"""gunicorn settings, the same file for the local stack and the server.

Paths derive from the project root (the directory above deploy/), so the file
works wherever the project lives; APP_ROOT overrides it. Check it with
`gunicorn --check-config -c deploy/gunicorn.conf.py`.
"""

import grp
import os
from pathlib import Path

root = Path(os.environ.get("APP_ROOT", Path(__file__).resolve().parent.parent))
run_dir = root / "run"

wsgi_app = "{{ cookiecutter.project_slug }}.wsgi:application"

# Reload gap: on HUP (`make reload`) gunicorn starts new workers and stops the
# old ones at once, so requests wait in the socket's backlog until the new
# workers have imported Django (~0.5 s of CPU each, more under load). Import
# the heavy libraries here, in the master, once: workers fork with them loaded
# and start in a few tens of ms. Two reloads under `wrk` (8 connections,
# /healthz): the slowest request 0.54-0.74 s without this, 0.20-0.25 s with it.
# Only modules that need neither settings nor the app registry: the project's
# settings and code are imported by each worker, so HUP still loads new code.
# The master keeps what it imported at its start: after upgrading Django,
# django-redis or redis, restart gunicorn instead of HUP (deploy/install.sh
# does when requirements.lock changed).
for _module in ("django.core.handlers.wsgi", "django.db.models", "django.contrib.admin", "django_redis.cache", "redis"):
    try:
        __import__(_module)
    except ImportError:  # `gunicorn --check-config` run outside the project's venv
        pass

chdir = str(root)

# nginx talks to gunicorn over this socket. umask 007 makes it 0770: the app
# user and the socket's group may connect, nobody else may. Locally the group
# is yours. On the server deploy/install.sh sets GUNICORN_SOCKET_GROUP to
# <slug>-web, the one group nginx's user joins (the app's own group reads
# .env and var/): when_ready below hands the socket to it.
# GUNICORN_SOCKET_NAME=gunicorn-next: the stand-in that deploy/install.sh
# runs while it restarts gunicorn on a new virtualenv (nginx's backup server).
socket_name = os.environ.get("GUNICORN_SOCKET_NAME", "gunicorn")
bind = [f"unix:{run_dir}/{socket_name}.sock"]
umask = 0o007


def when_ready(server):
    group = os.environ.get("GUNICORN_SOCKET_GROUP")
    if group:
        # The app user is a member of that group, so it may chown to it.
        os.chown(run_dir / f"{socket_name}.sock", -1, grp.getgrnam(group).gr_gid)
        server.log.info("%s.sock: group %s, mode 0770", socket_name, group)


# gunicornc's control socket: by default it lands in $HOME, which supervisor
# does not change per program, so two apps would share one. Keep it here.
control_socket = str(run_dir / f"{socket_name}.ctl")

# Chosen with the template's benchmark (cookiecutter-django-socketstack's
# tools/bench.py --compare workers; its docs/performance.md has the tables):
# sync workers beat gthread (2x4: 0.77x, 1x8: 0.40x of sync on a plain view);
# from one worker per core to 2 x cores + 1 the rate stays within noise, so
# one per core plus one (to cover a worker waiting on Redis or the database)
# without paying ~50 MB per extra worker. Each is overridable from the env.
workers = int(os.environ.get("GUNICORN_WORKERS", (os.cpu_count() or 1) + 1))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
# Only used by the gthread worker class.
threads = int(os.environ.get("GUNICORN_THREADS", 1))
timeout = 30
graceful_timeout = 20
# Recycle workers now and then so a slow leak cannot grow forever; the jitter
# keeps them from restarting all at once. A new worker imports Django again
# (~0.4 s of CPU). Measured on a plain view under load, against never
# recycling: every 2000 requests 0.83x the rate and 2.6x the p99; every
# 20000 0.93x (one recycle per worker in that run, ~0.02 ms per request).
max_requests = 20000
max_requests_jitter = 2000

# Behind a unix socket the peer address is empty: log the client address that
# nginx forwards instead. Logs go to stdout/stderr, which supervisor keeps.
accesslog = "-"
errorlog = "-"
access_log_format = '%({x-forwarded-for}i)s "%(r)s" %(s)s %(b)s %(L)ss "%(a)s"'
