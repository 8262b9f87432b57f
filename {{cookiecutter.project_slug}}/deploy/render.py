"""Fill in the deploy files: the one renderer for the local stack and the server.

The files in deploy/nginx/ name what differs between a checkout and a server
as @NAME@ placeholders (@APP_ROOT@, @DOMAIN@, ...). deploy/local_stack.py
imports this module for `make up`; deploy/install.sh runs it with the
system's python3 (standard library only, so no virtualenv is needed):

    python3 deploy/render.py FILE NAME=VALUE ...   FILE with @NAME@ filled in, on stdout
    python3 deploy/render.py supervisor APP_ROOT USER WEB_GROUP [--without-redis]
                                                   deploy/supervisor/programs.conf for
                                                   the server's supervisor, on stdout
                                                   (--without-redis: an app host, ROLE=app)
"""

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
# Debian's libnginx-mod-http-brotli-static (deploy/install.sh installs it;
# its /etc/nginx/modules-enabled/ line loads it into the server's nginx).
BROTLI_STATIC = Path("/usr/lib/nginx/modules/ngx_http_brotli_static_module.so")
BROTLI_LINE = re.compile(r"^[ \t]*(brotli_static |load_module \S*ngx_http_brotli_static_module\.so;)")


class RenderError(Exception):
    pass


def has_ipv6():
    return os.path.exists("/proc/net/if_inet6")


@functools.cache
def nginx_version():
    """The installed nginx's version as a tuple, e.g. (1, 22, 1); None without nginx."""
    # A normal user's PATH may lack /usr/sbin, where Debian puts nginx.
    binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if not binary:
        return None
    # `nginx -v` prints "nginx version: nginx/1.22.1" on stderr.
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(map(int, match.groups())) if match else None


def http2_as_listen_flag(text):
    """`http2 on;` (nginx >= 1.25.1) spelled for older nginx: a flag of each TLS `listen`.

    nginx 1.26 (Debian 13) warns that the flag is deprecated on every `nginx -t`
    and reload; nginx 1.22 (Debian 12) does not know the directive. The files
    are written in the new form, and this gives Debian 12 the old one.
    """
    text = re.sub(r"^[ \t]*http2 on;\n", "", text, flags=re.MULTILINE)
    return re.sub(r"^([ \t]*listen [^;#]*\bssl\b)", r"\1 http2", text, flags=re.MULTILINE)


def fill_in(text, values, ipv6=None, nginx=None, brotli=None):
    """Replace every @NAME@ with values[NAME]; a placeholder without a value is an error.

    The result suits this machine: no IPv6 listeners where it has none,
    http2 spelled for its nginx (nginx: a version tuple, default the installed
    one), and no brotli_static where the module is missing (brotli: a bool,
    default whether BROTLI_STATIC exists), so that nginx sends the .gz files.
    """

    def value(match):
        if match.group(1) not in values:
            raise RenderError(f"@{match.group(1)}@ has no value: give {match.group(1)}=...")
        return str(values[match.group(1)])

    text = PLACEHOLDER.sub(value, text)
    if not (has_ipv6() if ipv6 is None else ipv6):
        # No IPv6 on this machine: nginx could not bind [::].
        text = "".join(line for line in text.splitlines(keepends=True) if "listen [::]" not in line)
    if not (BROTLI_STATIC.exists() if brotli is None else brotli):
        # nginx would refuse the unknown directive; gzip_static stays.
        text = "".join(line for line in text.splitlines(keepends=True) if not BROTLI_LINE.match(line))
    if "http2 on;" in text and (nginx or nginx_version() or (1, 22, 1)) < (1, 25, 1):
        text = http2_as_listen_flag(text)
    return text


def server_programs(text, app_root, user, web_group, source="deploy/supervisor/programs.conf", without_redis=False):
    """programs.conf for the system supervisor.

    %(here)s/../.. becomes the app root, each program runs as the app user,
    the project's Redis sockets are closed to everyone else, and one group
    (named after the user, the project's slug) starts, stops and signals them.
    without_redis leaves the Redis programs out: an app host's Redis is elsewhere.
    """
    lines = [
        f"; Written by deploy/install.sh from {app_root}/{source}:",
        "; edit that file and run install.sh again, not this copy.",
    ]
    programs = []
    skipping = False
    for line in text.replace("%(here)s/../..", app_root).replace("%(here)s/..", f"{app_root}/deploy").splitlines():
        if line.startswith("["):
            skipping = without_redis and line.startswith("[program:") and "-redis-" in line
        if skipping:
            continue
        if line.startswith("command=redis-server "):
            line += " --unixsocketperm 700"
        lines.append(line)
        header = re.fullmatch(r"\[program:(.*)\]", line)
        if header:
            programs.append(header.group(1))
            lines.append(f"user={user}")
            # supervisor keeps its own HOME for user=; no secrets here.
            # GUNICORN_SOCKET_GROUP: gunicorn.sock is 0770 with group web_group,
            # which nginx joins (deploy/gunicorn.conf.py).
            lines.append(
                f'environment=HOME="{app_root}",USER="{user}",LANG="C.UTF-8",GUNICORN_SOCKET_GROUP="{web_group}"'
            )
    lines += ["", f"[group:{user}]", f"programs={','.join(programs)}"]
    return "\n".join(lines) + "\n"


def main(argv):
    try:
        if len(argv) in (5, 6) and argv[1] == "supervisor" and argv[5:] in ([], ["--without-redis"]):
            text = (DEPLOY / "supervisor" / "programs.conf").read_text()
            sys.stdout.write(server_programs(text, *argv[2:5], without_redis=len(argv) == 6))
            return 0
        if len(argv) >= 2 and argv[1] != "supervisor":
            values = dict(arg.partition("=")[::2] for arg in argv[2:])
            sys.stdout.write(fill_in(Path(argv[1]).read_text(), values))
            return 0
    except (OSError, RenderError) as exc:
        print(f"render.py: {argv[1]}: {exc}", file=sys.stderr)
        return 1
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
