#!/usr/bin/env bash
# Install or update this project on a Debian 12 or 13 server. Run as root from a
# checkout of the project:  sudo deploy/install.sh
#
#   browser -> nginx (80 -> 443, TLS) -> APP_ROOT/run/gunicorn.sock -> gunicorn
#   (system supervisor, as the app user) -> Django -> Redis on unix sockets
#   (and, with DATABASE=postgresql in deploy/project.env, Debian's PostgreSQL
#   cluster on port 5432: role and database <slug>, peer over its socket)
#
# Safe to run again (after `git pull`): it syncs the code, migrates, collects
# static files, reloads gunicorn gracefully (HUP) and nginx, and keeps the env
# file, so nobody is logged out. It installs requirements.lock, the versions
# the tests ran, and stops first when that lock is older than pyproject.toml.
# Settings (environment variables):
#   DOMAIN=...     the site's name          (default: DEFAULT_DOMAIN in deploy/project.env)
#   APP_ROOT=...   where the app lives      (default: /webapps/<slug>)
#   PYTHON=...     interpreter for the venv (default: the first of /usr/bin/python3,
#                  python3.12, python3.13 that is new enough, by its versioned name)
#   WHEELHOUSE=dir install the locked packages from dir only, with no index
#                  (a server without PyPI): `make wheelhouse SERVER_PYTHON=3.13.5`
#                  on a machine with PyPI writes it; copy it to the server
#   LETSENCRYPT_EMAIL=you@example.com  get a Let's Encrypt certificate for DOMAIN
#                  with certbot (HTTP-01 through this site's port 80) and switch to it
#   ACME_SERVER=...    another ACME directory (default: Let's Encrypt production;
#                  staging: https://acme-staging-v02.api.letsencrypt.org/directory)
#   ACME_CA_BUNDLE=... CA file certbot trusts for ACME_SERVER (a test server's own CA)
#   ROLE=single    everything on this server (the default); ROLE=app: nginx and
#                  Django, Redis and PostgreSQL elsewhere (REDIS_CACHE_URL, ...);
#                  ROLE=data: only Redis and PostgreSQL, TLS on DATA_ADDRESS.
#                  See deploy/roles.sh and docs/data-off-the-box.md.
# Without systemd (containers, CI) it starts the daemons with service(8) or directly.
# `deploy/install.sh --render-nginx DIR` only writes the nginx files into DIR
# (no root needed; the template's tests run `nginx -t` on them).
set -Eeuo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# SLUG, DEFAULT_DOMAIN, REDIS_MODE, MIN_PYTHON, APP_USER, WEB_GROUP, the
# nginx and supervisor paths, say, ctl, has_systemd, nginx_user.
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$SRC/deploy/common.sh"
# ROLE (single, app, data) and its steps: validate_role, app_role_env, data_main.
# shellcheck source-path=SCRIPTDIR source=roles.sh
. "$SRC/deploy/roles.sh"
DOMAIN="${DOMAIN:-$DEFAULT_DOMAIN}"
APP_ROOT="${APP_ROOT:-/webapps/$SLUG}"
VENV="$APP_ROOT/.venv"
ENV_FILE="$APP_ROOT/.env"
MARKER="$APP_ROOT/.socketstack-app"
SELF_SIGNED_DIR="/etc/ssl/socketstack/$DOMAIN"
LETSENCRYPT_DIR="/etc/letsencrypt/live/$DOMAIN"
LETSENCRYPT_EMAIL="${LETSENCRYPT_EMAIL:-}"
ACME_SERVER="${ACME_SERVER:-https://acme-v02.api.letsencrypt.org/directory}"
ACME_CA_BUNDLE="${ACME_CA_BUNDLE:-}"
ACME_FAILED=""
PAGE_CACHE_SNIPPETS=(page-cache-zone page-cache)
PACKAGES=(nginx libnginx-mod-http-brotli-static redis-server supervisor python3-venv openssl rsync curl ca-certificates)
umask 027

STEP=""
HINT=""
STARTED=$SECONDS

fail() {
    # One line that names what is wrong and how to fix it, before anything else.
    echo "install.sh: ERROR: $*" >&2
    exit 1
}

on_error() {
    local code=$?
    # A failure inside a subshell (a pipeline, `manage`) reaches the main shell
    # too: say it once, there.
    [ "$BASHPID" = "$$" ] || exit "$code"
    stop_stand_in >/dev/null
    echo >&2
    echo "install.sh: FAILED in step \"$STEP\" (exit $code)." >&2
    [ -z "$HINT" ] || echo "install.sh: what to do: $HINT" >&2
    echo "install.sh: every step is safe to repeat: fix the cause, then run deploy/install.sh again." >&2
    exit "$code"
}

step() {
    STEP="$1"
    HINT="$2"
    printf '\n==> [%s s] %s\n' "$((SECONDS - STARTED))" "$STEP"
}

# (0) Input ------------------------------------------------------------------

validate_input() {
    [[ "$DOMAIN" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$ ]] ||
        fail "DOMAIN='$DOMAIN' is not a hostname: give a lowercase name such as www.example.com (no scheme, no port)."
    [[ "$APP_ROOT" =~ ^/[A-Za-z0-9._/-]+$ ]] && [[ "$APP_ROOT" != *..* ]] ||
        fail "APP_ROOT='$APP_ROOT' must be an absolute path of letters, digits and ._-/ only, e.g. /webapps/$SLUG."
    case "$APP_ROOT" in
    / | /bin* | /boot* | /dev* | /etc* | /lib* | /proc* | /root | /run | /sbin* | /sys* | /usr | /usr/* | /var | /tmp)
        fail "APP_ROOT='$APP_ROOT' is a system directory: use a directory of its own, e.g. /webapps/$SLUG." ;;
    esac
    local longest="$APP_ROOT/run/redis-sessions.sock"
    [ "$(printf %s "$longest" | wc -c)" -le 107 ] ||
        fail "APP_ROOT='$APP_ROOT' is too long: $longest exceeds the 107-byte limit of unix socket paths. Use a shorter APP_ROOT."
    [ "$(printf %s "$WEB_GROUP" | wc -c)" -le 32 ] ||
        fail "the project slug '$SLUG' is longer than 28 characters: the group '$WEB_GROUP' would exceed the 32-character limit of Linux group names. Bake the project with a shorter slug."
}

validate_acme() {
    [ -n "$LETSENCRYPT_EMAIL" ] || return 0
    [[ "$LETSENCRYPT_EMAIL" =~ ^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$ ]] ||
        fail "LETSENCRYPT_EMAIL='$LETSENCRYPT_EMAIL' is not an email address: give the one the CA writes to about expiry, e.g. you@example.com."
    [[ "$ACME_SERVER" =~ ^https://[^[:space:]]+$ ]] ||
        fail "ACME_SERVER='$ACME_SERVER' is not an https URL: give an ACME directory URL, or leave it unset for Let's Encrypt."
    [ -z "$ACME_CA_BUNDLE" ] || [ -r "$ACME_CA_BUNDLE" ] ||
        fail "ACME_CA_BUNDLE='$ACME_CA_BUNDLE' is not a readable file: give the PEM file of the CA that signed ACME_SERVER's certificate, or leave it unset."
}

# (1) nginx files: also used by --render-nginx -------------------------------

render_nginx() {
    # render_nginx SITE LOCATIONS DEFAULT CERT KEY: writes each as FILE.new
    local site="$1" locations="$2" default="$3" cert="$4" key="$5"
    local snippets name
    snippets="$(dirname "$locations")"
    render "$SRC/deploy/nginx/locations.conf" APP_ROOT="$APP_ROOT" >"$locations.new"
    # The page cache snippets exist only with nginx_page_cache: site.conf
    # includes them from the same snippets directory as the locations.
    for name in "${PAGE_CACHE_SNIPPETS[@]}"; do
        [ ! -f "$SRC/deploy/nginx/$name.conf" ] ||
            render "$SRC/deploy/nginx/$name.conf" APP_ROOT="$APP_ROOT" >"$snippets/$SLUG-$name.conf.new"
    done
    render "$SRC/deploy/nginx/site.conf" APP_ROOT="$APP_ROOT" DOMAIN="$DOMAIN" LOCATIONS="$locations" \
        SNIPPETS="$snippets" SSL_CERTIFICATE="$cert" SSL_CERTIFICATE_KEY="$key" >"$site.new"
    render "$SRC/deploy/nginx/default.conf" >"$default.new"
}

render() {
    # deploy/render.py fills in every deploy file, for `make up` too; it needs
    # only the standard library, so the system's python3 runs it.
    python3 "$SRC/deploy/render.py" "$@"
}

if [ "${1:-}" = "--render-nginx" ]; then
    out="${2:?usage: deploy/install.sh --render-nginx DIR}"
    validate_input
    mkdir -p "$out"
    render_nginx "$out/$SLUG.conf" "$out/$SLUG-locations.conf" "$out/000-socketstack-default.conf" \
        "${SSL_CERTIFICATE:-$out/fullchain.pem}" "${SSL_CERTIFICATE_KEY:-$out/privkey.pem}"
    for f in "$out"/*.new; do mv "$f" "${f%.new}"; done
    echo "nginx files for $DOMAIN written to $out"
    exit 0
fi
[ $# -eq 0 ] || fail "unknown argument '$1': run deploy/install.sh without arguments (settings come from DOMAIN, APP_ROOT, PYTHON)."

# (2) Steps --------------------------------------------------------------------

preflight() {
    validate_input
    validate_acme
    validate_role
    [ "$(id -u)" -eq 0 ] || fail "must run as root: sudo deploy/install.sh"
    check_release
    [ -f "$SRC/manage.py" ] && [ -f "$SRC/deploy/gunicorn.conf.py" ] ||
        fail "$SRC does not look like the project: run deploy/install.sh from a checkout of it."
    check_lock
    trap on_error ERR
    echo "install.sh: $SLUG for https://$DOMAIN/ in $APP_ROOT (from $SRC)"
    if has_systemd; then
        echo "install.sh: services: systemd (systemctl)"
    else
        echo "install.sh: services: no systemd (container or CI): service(8), or the daemons started directly"
    fi
}

check_lock() {
    # The server runs exactly the versions of requirements.lock, the ones the
    # tests ran: a lock older than pyproject.toml stops here, before any change.
    local python message
    python="$(command -v python3 || true)"
    if [ -z "$python" ]; then
        LOCK_CHECK_LATER=yes # no python3 yet: checked once the packages are in
        return 0
    fi
    message="$("$python" "$SRC/deploy/checkout.py" check-lock 2>&1)" || fail "$SRC/${message:-requirements.lock: cannot be checked against pyproject.toml}"
    if [ -n "${WHEELHOUSE:-}" ]; then
        # Every locked file for this Python, before anything changes.
        message="$("$python" "$SRC/deploy/checkout.py" check-wheelhouse "$WHEELHOUSE" 2>&1)" || fail "$message"
        WHEELHOUSE="$(readlink -f "$WHEELHOUSE")"
    fi
    LOCK_CHECK_LATER=no
}

install_packages() {
    step "Debian packages" "check the apt sources and the network (apt-get update), then run again."
    # An app host's Redis is elsewhere (ROLE=app).
    if [ "$ROLE" = app ]; then mapfile -t PACKAGES < <(printf '%s\n' "${PACKAGES[@]}" | grep -vx redis-server); fi
    apt_install "${PACKAGES[@]}"
}

apt_install() {
    # apt_install PACKAGE...: installs the ones that are missing, says which.
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "all present: $*"
        return
    fi
    say "installing: ${missing[*]}"
    apt-get update -qq
    # Waits for another apt or unattended-upgrades instead of failing at once.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
        "${missing[@]}" >/dev/null
}

step_postgresql() {
    step "PostgreSQL: role and database '$APP_USER' (Debian's cluster on port $PG_PORT, peer over $PG_SOCKET_DIR)" \
        "see PostgreSQL's message above and /var/log/postgresql/; \`pg_lsclusters\` lists the clusters."
    local version name status cluster state role owner
    apt_install postgresql
    read -r version name status <<<"$(pg_cluster)"
    [ -n "$version" ] ||
        fail "no PostgreSQL cluster on port $PG_PORT (pg_lsclusters): the site connects to $PG_SOCKET_DIR/.s.PGSQL.$PG_PORT. Create Debian's default cluster (pg_createcluster --start $(pg_server_version) main), then run install.sh again."
    cluster="$version/$name"
    # Only this cluster: others (other ports) are left as they are.
    if has_systemd; then systemctl enable --quiet postgresql; fi
    if [[ "$status" == online* ]]; then
        say "cluster $cluster on port $PG_PORT: running"
    else
        pg_ctlcluster "$version" "$name" start
        say "cluster $cluster on port $PG_PORT: started"
    fi
    # Look before changing anything: a role or database of this name that is
    # not this site's stops the install, and nothing is changed or dropped.
    state="$(pg_state "$cluster")"
    IFS='|' read -r role owner <<<"$state"
    case "$role" in
    superuser)
        fail "PostgreSQL role '$SLUG' (cluster $cluster) is a superuser: the site must not run as one. install.sh changed no role and no database. Rename it (sudo -u postgres psql -c 'ALTER ROLE $SLUG RENAME TO ${SLUG}_admin'), or if it is this site's remove the right (ALTER ROLE $SLUG NOSUPERUSER), then run install.sh again." ;;
    foreign)
        fail "PostgreSQL role '$SLUG' (cluster $cluster) exists and install.sh did not create it: the site would run as someone else's role. install.sh changed no role and no database. Rename that role (sudo -u postgres psql -c 'ALTER ROLE $SLUG RENAME TO ${SLUG}_old'), then run install.sh again." ;;
    esac
    [ -z "$owner" ] || [ "$owner" = "$SLUG" ] ||
        fail "PostgreSQL database '$SLUG' (cluster $cluster) is owned by role '$owner', not '$SLUG': it is not this site's. install.sh changed no role and no database. Rename it (sudo -u postgres psql -c 'ALTER DATABASE $SLUG RENAME TO ${SLUG}_old'), then run install.sh again."
    if [ "$role" = none ]; then
        # LOGIN only: no superuser, CREATEDB or CREATEROLE; no password (peer).
        pg_sql "$cluster" <<<"CREATE ROLE :\"slug\" LOGIN; COMMENT ON ROLE :\"slug\" IS :'marker';"
        say "role $SLUG created (login by peer only, no other rights)"
    else
        say "role $SLUG exists: kept"
    fi
    if [ -z "$owner" ]; then
        # Only its owner (and superusers) may connect: other roles get no CONNECT.
        pg_sql "$cluster" <<<"CREATE DATABASE :\"slug\" OWNER :\"slug\" TEMPLATE template0 ENCODING 'UTF8';
REVOKE ALL ON DATABASE :\"slug\" FROM PUBLIC;"
        say "database $SLUG created (owner $SLUG, UTF8, no access for other roles)"
    else
        say "database $SLUG exists: kept (owner $SLUG)"
    fi
}

create_user() {
    step "System user and group '$APP_USER'" "see the useradd/groupadd error above."
    if ! getent group "$APP_USER" >/dev/null; then
        groupadd --system "$APP_USER"
        say "group $APP_USER created"
    fi
    if ! getent group "$WEB_GROUP" >/dev/null; then
        groupadd --system "$WEB_GROUP"
        say "group $WEB_GROUP created (nginx's way in: the socket, static/, media/)"
    fi
    if ! id -u "$APP_USER" >/dev/null 2>&1; then
        useradd --system --gid "$APP_USER" --home-dir "$APP_ROOT" --no-create-home \
            --shell /usr/sbin/nologin --comment "$SLUG web application" "$APP_USER"
        say "user $APP_USER created (no login shell, home $APP_ROOT)"
    else
        say "user $APP_USER exists"
    fi
    # gunicorn (as the app user) hands its socket to this group: chown needs membership.
    usermod -a -G "$WEB_GROUP" "$APP_USER"
}

make_layout() {
    step "App root $APP_ROOT" "check that $(dirname "$APP_ROOT") is a local, writable file system."
    # dir:mode:owner:group. The app user writes only run/, var/*, static/, media/.
    # Others (nginx's user among them) may only traverse the app root and var/:
    # everything below is closed to them except through group $WEB_GROUP, which
    # nginx's user joins: run/ (0710, so it reaches gunicorn.sock but cannot
    # list run/; the Redis sockets are 0700), static/, media/ and var/acme/
    # (setgid, so new files keep the group). See docs/deploy.md, "What lives where".
    local spec
    for spec in \
        ".:0751:root:$APP_USER" "logs:0750:root:$APP_USER" "var:0751:root:$APP_USER" \
        "var/acme:2750:root:$WEB_GROUP" "run:0710:$APP_USER:$WEB_GROUP" \
        "var/db:0750:$APP_USER:$APP_USER" "var/redis-cache:0750:$APP_USER:$APP_USER" \
        "var/redis-sessions:0750:$APP_USER:$APP_USER" "static:2750:$APP_USER:$WEB_GROUP" \
        "media:2750:$APP_USER:$WEB_GROUP"; do
        IFS=: read -r dir mode owner group <<<"$spec"
        install -d -m "$mode" -o "$owner" -g "$group" "$APP_ROOT/$dir"
    done
    # An app root from before the split had these in group $APP_USER.
    find "$APP_ROOT/static" "$APP_ROOT/media" "$APP_ROOT/var/acme" ! -group "$WEB_GROUP" \
        -exec chgrp -h "$WEB_GROUP" {} + -exec chmod g+rX {} +
    [ -f "$MARKER" ] || printf 'socketstack app root of %s; deploy/uninstall.sh deletes this directory\n' "$SLUG" >"$MARKER"
    say "code, .venv, logs/ and var/ owned by root; run/, var/db, var/redis-*, static/, media/ by $APP_USER"
    say "group $WEB_GROUP (nginx) reaches run/ (traverse only), static/, media/, var/acme/; the rest: group $APP_USER, nothing for others"
}

sync_code() {
    step "Code -> $APP_ROOT" "see the rsync error above."
    if [ "$(readlink -f "$SRC")" = "$(readlink -f "$APP_ROOT")" ]; then
        say "running from the app root itself: nothing to copy"
    else
        # --delete removes files deleted upstream; excluded paths are kept, but
        # a __pycache__ is perishable (-p): it does not keep a folder that a
        # template update moved away (web/sessions/) alive.
        # Directories keep o+x meanwhile: the app root is one of them, and
        # nginx reaches gunicorn.sock through it (code_permissions then
        # leaves that only where nginx needs it).
        rsync -a --delete --chown="root:$APP_USER" --chmod=Dg+rx,Fg+r,go-w,Fo-rwx,Do-rw,Do+x \
            --exclude=/.git/ --exclude=/.venv --exclude='/.venv-*/' --exclude=/.venv.new --exclude=/run/ --exclude=/var/ --exclude=/logs/ \
            --exclude=/static/ --exclude=/media/ --exclude=/.env --exclude='/db.sqlite3*' \
            --exclude=/.socketstack-app --exclude='*.egg-info/' --filter='-p __pycache__/' \
            --exclude=.pytest_cache/ --exclude=.ruff_cache/ --exclude=/wheelhouse/ \
            "$SRC/" "$APP_ROOT/"
        say "synced $SRC -> $APP_ROOT (without .git, .env, .venv and runtime data)"
    fi
    chown "root:$APP_USER" "$APP_ROOT"
    chmod 0751 "$APP_ROOT"
}

python_ok() {
    # Runs as the app user: an interpreter under /root (pyenv) would not do.
    runuser -u "$APP_USER" -- "$1" -c "import sys, venv; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" \
        >/dev/null 2>&1
}

find_python() {
    # The interpreter by its versioned name (/usr/bin/python3.11, not python3):
    # the venv links to it, and a Debian upgrade keeps the old one installed
    # until `apt autoremove`, so the site keeps serving until install.sh
    # moves it to the new Python.
    local candidate candidates
    if [ -n "${PYTHON:-}" ]; then
        candidates=("$(command -v "$PYTHON" || echo "$PYTHON")")
    else
        candidates=(/usr/bin/python3 /usr/local/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.13 /usr/bin/python3.13)
    fi
    for candidate in "${candidates[@]}"; do
        if [ -x "$candidate" ] && python_ok "$candidate"; then
            readlink -f "$candidate"
            return 0
        fi
    done
}

python_minor() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

venv_python() {
    # venv_python DIR: the X.Y the venv in DIR was built for, when its
    # bin/python still is that Python. A venv of Debian 12 whose python
    # links to /usr/bin/python3 runs 3.13 after the upgrade, with its
    # packages in lib/python3.11: that one answers nothing.
    local built running
    built="$(sed -n -E 's/^version(_info)? *= *([0-9]+\.[0-9]+).*/\2/p' "$1/pyvenv.cfg" 2>/dev/null | head -n 1)"
    running="$(python_minor "$1/bin/python")" || return 0
    if [ -n "$built" ] && [ "$built" = "$running" ]; then echo "$running"; fi
}

venv_links_versioned() {
    # venv_links_versioned DIR: does the venv's python lead to a versioned
    # interpreter (/usr/bin/python3.11)? An older install.sh linked it to
    # /usr/bin/python3, which a Debian upgrade points at the next Python: the
    # site would stop with the upgrade instead of at the next install.sh.
    local link="$1/bin/python" target
    for _ in 1 2 3; do
        target="$(readlink "$link")" || return 1
        case "$target" in
        /*) [[ "$(basename "$target")" =~ ^python[0-9]+\.[0-9]+$ ]]; return ;;
        *) link="$1/bin/$target" ;;
        esac
    done
    return 1
}

make_venv() {
    step "Virtualenv $VENV" "see pip's error above; install.sh builds a new venv when the one in use does not fit."
    local python want current stamp lock_sha
    DEPS_CHANGED=no
    OLD_VENV=""
    HINT="install Python >= $MIN_PYTHON with the venv module (apt-get install python3-venv), or set PYTHON=/path/to/python$MIN_PYTHON (readable by $APP_USER, not under /root)."
    python="$(find_python)"
    if [ -z "$python" ]; then
        say "no Python >= $MIN_PYTHON that $APP_USER can run"
        false
    fi
    want="$(python_minor "$python")"
    # The venv in use: .venv links to it (a site installed before links
    # existed has .venv itself).
    current="$(readlink -f "$VENV" 2>/dev/null || true)"
    if [ -d "$current" ] && [ "$(venv_python "$current")" = "$want" ] && venv_links_versioned "$current" &&
        python_ok "$current/bin/python"; then
        VENV_DIR="$current"
        say "in use: $VENV_DIR ($("$VENV_DIR/bin/python" --version), $python)"
    else
        # Never reuse a venv whose Python changed: a new one beside it, which
        # the programs switch to once it is complete (step_supervisor).
        [ ! -d "$current" ] || OLD_VENV="$current"
        VENV_DIR="$(mktemp -d "$APP_ROOT/.venv-$want.XXXX")"
        say "${OLD_VENV:+$OLD_VENV is for $(venv_links_versioned "$OLD_VENV" && echo "Python $(venv_python "$OLD_VENV" | grep . || echo "that is gone")" || echo "an unversioned python3"), not $want: }new venv $VENV_DIR with $python ($("$python" --version))"
        "$python" -m venv "$VENV_DIR"
    fi
    HINT="see pip's error above${WHEELHOUSE:+ (wheels from $WHEELHOUSE only)}; the venv in use is kept until a new one is complete."
    # Exactly the locked versions (every file's hash checked), and only when
    # the lock changed: a second run stays fast.
    lock_sha="$(sha256sum "$APP_ROOT/requirements.lock" | cut -d' ' -f1)"
    stamp="$VENV_DIR/.socketstack-lock.sha256"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$lock_sha" ]; then
        say "requirements.lock unchanged since the last install"
    else
        local from_wheelhouse=()
        if [ -n "${WHEELHOUSE:-}" ]; then from_wheelhouse=(--no-index --find-links "$WHEELHOUSE"); fi
        say "pip install --require-hashes -r requirements.lock ${from_wheelhouse[*]}"
        "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
            "${from_wheelhouse[@]}" -r "$APP_ROOT/requirements.lock"
        # The same venv with new packages: gunicorn's master must restart (step_supervisor).
        [ -n "$OLD_VENV" ] || DEPS_CHANGED=yes
        echo "$lock_sha" >"$stamp"
    fi
    # Bytecode for the project itself (PYTHONDONTWRITEBYTECODE may be set, and
    # the app user cannot write __pycache__ here): workers boot fast.
    "$VENV_DIR/bin/python" -m compileall -q "$APP_ROOT/$SLUG" "$APP_ROOT/web" "$APP_ROOT/manage.py" >/dev/null
    # A first install: nothing runs from a venv yet.
    if [ ! -d "$current" ]; then link_venv; fi
    code_permissions
}

link_venv() {
    # .venv, the path the programs (supervisor), manage.py and you use, links
    # to the venv in VENV_DIR. A .venv directory of an older install moves
    # aside; remove_old_venvs deletes it once nothing runs from it.
    ln -sfn "$(basename "$VENV_DIR")" "$APP_ROOT/.venv.new"
    if [ -d "$VENV" ] && [ ! -L "$VENV" ]; then mv -T "$VENV" "$(mktemp -u "$APP_ROOT/.venv-old.XXXX")"; fi
    mv -T "$APP_ROOT/.venv.new" "$VENV"
}

remove_old_venvs() {
    # Venvs of earlier Pythons, or of a run that failed half-way.
    local dir
    for dir in "$APP_ROOT"/.venv-*; do
        [ ! -d "$dir" ] || [ "$dir" = "$VENV_DIR" ] || { rm -rf "$dir" && say "removed $dir"; }
    done
}

code_permissions() {
    # Code and venv: root's, readable by the app's group (umask 027 made them
    # root:root), writable by nobody else. Runtime directories keep theirs.
    # Symbolic links are skipped: .venv/bin/python points into /usr/bin.
    # nginx's own pages (50x while gunicorn is down, 429): a path to them that
    # others may traverse (not list), and the pages for group $WEB_GROUP only.
    # Set apart from the rest, never taken away meanwhile: the site is live,
    # and nginx reaches run/ and its pages through these.
    local gate=("$APP_ROOT" "$APP_ROOT/deploy" "$APP_ROOT/deploy/nginx")
    chown "root:$APP_USER" "${gate[@]}"
    chmod g+rX,g-w,o-rw,o+x "${gate[@]}"
    chown "root:$WEB_GROUP" "$APP_ROOT"/deploy/nginx/*.html
    chmod g+r,g-w,o-rwx "$APP_ROOT"/deploy/nginx/*.html
    find "$APP_ROOT" -xdev \( -path "$APP_ROOT/run" -o -path "$APP_ROOT/var" -o -path "$APP_ROOT/static" \
        -o -path "$APP_ROOT/media" -o -path "$APP_ROOT/logs" -o -path "$ENV_FILE" \) -prune \
        -o ! -type l ! -path "$APP_ROOT" ! -path "$APP_ROOT/deploy" ! -path "$APP_ROOT/deploy/nginx" \
        ! -path "$APP_ROOT/deploy/nginx/*.html" -exec chown "root:$APP_USER" {} + -exec chmod g+rX,g-w,o-rwx {} +
    say "code and .venv: root:$APP_USER, group read-only, nothing for others (deploy/nginx/*.html: group $WEB_GROUP)"
}

write_env_file() {
    step "Env file $ENV_FILE" "check that $APP_ROOT is writable by root."
    if [ -e "$ENV_FILE" ]; then
        say "exists: kept as it is (the SECRET_KEY stays, so sessions stay valid)"
    else
        local tmp secret
        secret="$("$VENV_DIR/bin/python" -c 'import secrets; print(secrets.token_urlsafe(60))')"
        tmp="$(mktemp "$APP_ROOT/.env.XXXXXX")"
        cat >"$tmp" <<ENV
# Written once by deploy/install.sh: edit it here, it is never overwritten.
# Secrets live only in this file (mode 0640, root:$APP_USER), not in supervisor's.
DJANGO_SECRET_KEY=$secret
DJANGO_DEBUG=false
SITE_HTTPS=true
DJANGO_ALLOWED_HOSTS=$DOMAIN
DATABASE_URL=$(database_url)
REDIS_CACHE_URL=$(redis_url cache)
REDIS_SESSIONS_URL=$(redis_url sessions)
RUN_DIR=$APP_ROOT/run
STATIC_ROOT=$APP_ROOT/static
MEDIA_ROOT=$APP_ROOT/media
ENV
        chown "root:$APP_USER" "$tmp"
        chmod 0640 "$tmp"
        mv "$tmp" "$ENV_FILE"
        say "written with a new SECRET_KEY, DEBUG off, ALLOWED_HOSTS=$DOMAIN (mode 0640 root:$APP_USER)"
    fi
    HINT="make $ENV_FILE readable by $APP_USER: chown root:$APP_USER $ENV_FILE && chmod 0640 $ENV_FILE"
    runuser -u "$APP_USER" -- test -r "$ENV_FILE"
    grep -q "^DJANGO_ALLOWED_HOSTS=.*$DOMAIN" "$ENV_FILE" ||
        say "NOTE: DJANGO_ALLOWED_HOSTS in $ENV_FILE does not name $DOMAIN: edit it if the domain changed"
}

database_url() {
    if [ "$DATABASE" = "postgresql" ]; then
        # A socket path and no password: peer authentication maps $APP_USER to its role.
        echo "postgres:///$SLUG?host=$PG_SOCKET_DIR"
    else
        echo "sqlite:///$APP_ROOT/var/db/db.sqlite3"
    fi
}

redis_url() {
    if [ "$REDIS_MODE" = "system" ]; then
        # One instance, two databases (see the README's Redis section).
        [ "$1" = "cache" ] && echo "unix:///run/redis/redis-server.sock?db=0" || echo "unix:///run/redis/redis-server.sock?db=1"
    else
        echo "unix://$APP_ROOT/run/redis-$1.sock?db=0"
    fi
}

manage() {
    # As the app user, with a clean environment: only the env file counts.
    (cd "$APP_ROOT" && runuser -u "$APP_USER" -- env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$APP_ROOT" \
        "$VENV_DIR/bin/python" manage.py "$@")
}

system_redis() {
    step "Debian's redis-server (redis=system)" "see /var/log/redis/redis-server.log."
    local conf=/etc/redis/redis.conf before
    before="$(sha256sum "$conf")"
    sed -i -E -e 's|^#? *unixsocket .*|unixsocket /run/redis/redis-server.sock|' \
        -e 's|^#? *unixsocketperm .*|unixsocketperm 770|' "$conf"
    grep -q '^unixsocket /' "$conf" || echo "unixsocket /run/redis/redis-server.sock" >>"$conf"
    grep -q '^unixsocketperm ' "$conf" || echo "unixsocketperm 770" >>"$conf"
    usermod -a -G redis "$APP_USER"
    say "socket /run/redis/redis-server.sock mode 770; $APP_USER in group redis"
    if [ "$before" != "$(sha256sum "$conf")" ]; then
        service_do redis-server restart
    else
        service_do redis-server start
    fi
    for _ in $(seq 50); do
        [ -S /run/redis/redis-server.sock ] && break
        sleep 0.2
    done
    [ -S /run/redis/redis-server.sock ] || { say "no socket /run/redis/redis-server.sock"; false; }
}

service_do() {
    # service_do NAME start|restart|reload: systemd when it runs, else service(8).
    local name=$1 action=$2
    if has_systemd; then
        systemctl enable --quiet "$name"
        if [ "$action" = "start" ]; then systemctl start "$name"; else systemctl "$action" "$name"; fi
    else
        if [ "$action" = "start" ] && service "$name" status >/dev/null 2>&1; then return 0; fi
        service "$name" "$action" >/dev/null
    fi
    say "$name: $action"
}

step_django() {
    step "Django: migrate, collectstatic, check --deploy" \
        "read the error above: its last line names the cause. Settings come from $ENV_FILE; \`check --deploy\` wants DEBUG off, the HTTPS settings and a long SECRET_KEY."
    manage migrate --noinput -v 1 | sed 's/^/    /'
    manage collectstatic --noinput -v 0
    say "collectstatic: $APP_ROOT/static"
    manage check --deploy --fail-level WARNING | sed 's/^/    /'
}

# Files under /etc that an older template version installed and this one does
# not (a renamed supervisor program file, a moved nginx snippet ...), for sites
# installed before install.sh kept its list in $STATE_DIR. Every template
# version so far installed the same names: add the old name here when a rename
# lands (tests/test_update.py checks the deploy names against older versions).
RETIRED_FILES=()

step_retire_old_files() {
    step "Files of older versions under /etc" "remove the file named above by hand, then run install.sh again."
    local manifest="$STATE_DIR/$SLUG.files" f name previous=()
    local current=("$SUPERVISOR_CONF" "$NGINX_SITE" "$NGINX_LOCATIONS" "/etc/nginx/sites-enabled/$SLUG.conf")
    for name in "${PAGE_CACHE_SNIPPETS[@]}"; do
        [ ! -e "$SRC/deploy/nginx/$name.conf" ] || current+=("/etc/nginx/snippets/$SLUG-$name.conf")
    done
    install -d -m 0755 "$STATE_DIR"
    # The first install has no manifest yet. Read it here, not in a process
    # substitution: that subshell inherits the ERR trap (set -E), and a failed
    # read there would print a FAILED line for an install that goes on fine.
    if [ -f "$manifest" ]; then mapfile -t previous <"$manifest"; fi
    # What the last run installed (or what older versions did), minus what this run installs:
    # supervisorctl update (next step) stops the programs of a removed file, nginx's reload drops a removed site.
    for f in "${previous[@]}" "${RETIRED_FILES[@]}"; do
        case "$f" in /etc/nginx/?*|/etc/supervisor/conf.d/?*) ;; *) continue ;; esac
        [ -e "$f" ] || [ -L "$f" ] || continue
        printf '%s\n' "${current[@]}" | grep -qxF -- "$f" && continue
        rm -f -- "$f" "$f.bak"
        say "removed $f (an older version's; this one no longer installs it)"
    done
    printf '%s\n' "${current[@]}" >"$manifest"
    say "$manifest: the files this version installs under /etc"
}

render_supervisor() {
    # programs.conf with %(here)s/../.. spelled as the app root, each program
    # as the app user, and one group to start, stop and signal them together.
    local role_args=()
    if [ "$ROLE" = app ]; then role_args=(--without-redis); fi
    render supervisor "$APP_ROOT" "$APP_USER" "$WEB_GROUP" "${role_args[@]}"
}

supervisor_running() { ctl pid >/dev/null 2>&1; }

start_supervisor() {
    if has_systemd; then
        systemctl enable --quiet supervisor
        systemctl start supervisor
    elif ! supervisor_running; then
        service supervisor start >/dev/null 2>&1 || /usr/bin/supervisord -c /etc/supervisor/supervisord.conf
    fi
    for _ in $(seq 100); do
        supervisor_running && return 0
        sleep 0.1
    done
    say "supervisord does not answer on its socket: see /var/log/supervisor/supervisord.log"
    return 1
}

install_supervisor_conf() {
    # install_supervisor_conf NEW TARGET: TARGET becomes NEW when they differ
    # (supervisorctl update then restarts only the programs whose entry changed).
    if cmp -s "$1" "$2"; then
        say "$2 unchanged"
    else
        install -m 0644 -o root -g root "$1" "$2"
        say "$2 written"
    fi
    rm -f "$1"
}

step_supervisor() {
    step "supervisor: $SLUG:* (Redis, gunicorn as $APP_USER)" \
        "see $APP_ROOT/logs/*.log and /var/log/supervisor/supervisord.log; \`supervisorctl status $SLUG:*\` shows the state."
    local new was_running=no
    new="$(mktemp)"
    render_supervisor >"$new"
    start_supervisor
    say "supervisord running (pid $(ctl pid))"
    ctl status "$SLUG:$SLUG-gunicorn" 2>/dev/null | grep -q RUNNING && was_running=yes
    # A new venv (a new Python) or new packages in it: gunicorn's master must
    # restart, since it imported Django & co. (deploy/gunicorn.conf.py) and a
    # HUP would keep them. A stand-in answers meanwhile: no request fails.
    if [ "$was_running" = yes ] && { [ -n "$OLD_VENV" ] || [ "$DEPS_CHANGED" = yes ]; }; then start_stand_in; fi
    install_supervisor_conf "$new" "$SUPERVISOR_CONF"
    ctl reread | sed 's/^/    /'
    # update starts new programs and restarts changed ones; the rest keep running.
    ctl update | sed 's/^/    /'
    if [ -n "$OLD_VENV" ]; then
        link_venv
        say ".venv links to $VENV_DIR ($("$VENV_DIR/bin/python" --version)) instead of $OLD_VENV"
    fi
    if [ "$was_running" = yes ] && [ -n "$STAND_IN_PID" ]; then
        ctl restart "$SLUG:$SLUG-gunicorn" | sed 's/^/    /'
        say "gunicorn restarted on $VENV_DIR: ${OLD_VENV:+a new Python}${OLD_VENV:-new dependencies} (a HUP would keep the old ones)"
    elif [ "$was_running" = yes ]; then
        ctl signal HUP "$SLUG:$SLUG-gunicorn" | sed 's/^/    /'
        say "gunicorn reloaded gracefully (HUP): new code, Redis untouched, sessions kept"
    fi
    ctl start "$SLUG:*" >/dev/null 2>&1 || true
    wait_programs
    if [ -n "$STAND_IN_PID" ]; then
        HINT="gunicorn on $VENV_DIR does not answer on run/gunicorn.sock: see $APP_ROOT/logs/gunicorn.log."
        wait_gunicorn_answers "$APP_ROOT/run/gunicorn.sock"
        stop_stand_in
    fi
    remove_old_venvs
}

STAND_IN_PID=""

start_stand_in() {
    # A second gunicorn from the venv that is about to run, on
    # run/gunicorn-next.sock: nginx's backup server (site.conf) for the
    # requests that find no listener while gunicorn restarts.
    local socket="$APP_ROOT/run/gunicorn-next.sock"
    rm -f "$socket"
    # In the app root: the checkout install.sh runs from may be closed to the app user.
    setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups \
        env -i -C "$APP_ROOT" PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$APP_ROOT" GUNICORN_SOCKET_NAME=gunicorn-next \
        GUNICORN_SOCKET_GROUP="$WEB_GROUP" "$VENV_DIR/bin/python" -m gunicorn \
        --config "$APP_ROOT/deploy/gunicorn.conf.py" >>"$APP_ROOT/logs/gunicorn-next.log" 2>&1 &
    STAND_IN_PID=$!
    HINT="the stand-in gunicorn on $VENV_DIR did not answer: see $APP_ROOT/logs/gunicorn-next.log (its last lines are above)."
    if ! wait_gunicorn_answers "$socket"; then
        tail -n 15 "$APP_ROOT/logs/gunicorn-next.log" | sed 's/^/    | /'
        false
    fi
    say "stand-in gunicorn (pid $STAND_IN_PID) answers on run/gunicorn-next.sock while gunicorn restarts"
}

stop_stand_in() {
    # TERM is gunicorn's graceful stop: its requests in flight finish first.
    [ -n "$STAND_IN_PID" ] || return 0
    kill -TERM "$STAND_IN_PID" 2>/dev/null || true
    wait "$STAND_IN_PID" 2>/dev/null || true
    say "stand-in gunicorn (pid $STAND_IN_PID) stopped"
    STAND_IN_PID=""
}

wait_gunicorn_answers() {
    # Straight to the socket, past nginx: /healthz with the site's name.
    local status=""
    for _ in $(seq 150); do
        status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --unix-socket "$1" \
            -H "X-Forwarded-Proto: https" "http://$DOMAIN/healthz" || true)"
        [ "$status" = 200 ] && return 0
        sleep 0.2
    done
    say "$1: /healthz answered HTTP ${status:-nothing} for 30 s"
    return 1
}

say_lines() {
    local line
    while IFS= read -r line; do say "$line"; done <<<"$1"
}

wait_programs() {
    local states
    for _ in $(seq 150); do
        states="$(ctl status "$SLUG:*" 2>/dev/null || true)"
        if [ -n "$states" ] && ! grep -qv RUNNING <<<"$states"; then
            say_lines "$states"
            return 0
        fi
        sleep 0.2
    done
    say_lines "$states"
    say "not every program is RUNNING after 30 s"
    return 1
}

certificate() {
    if [ -s "$LETSENCRYPT_DIR/fullchain.pem" ] && [ -s "$LETSENCRYPT_DIR/privkey.pem" ]; then
        CERT="$LETSENCRYPT_DIR/fullchain.pem"
        KEY="$LETSENCRYPT_DIR/privkey.pem"
        say "certificate: Let's Encrypt ($LETSENCRYPT_DIR)"
        return
    fi
    CERT="$SELF_SIGNED_DIR/fullchain.pem"
    KEY="$SELF_SIGNED_DIR/privkey.pem"
    # An older install's placeholder was a CA certificate (CA:TRUE): replaced.
    if [ -s "$CERT" ] && [ -s "$KEY" ] && openssl x509 -checkend 86400 -noout -in "$CERT" >/dev/null &&
        openssl x509 -noout -ext basicConstraints -in "$CERT" 2>/dev/null | grep -q "CA:FALSE"; then
        say "certificate: self-signed ($CERT), until certbot gets a real one (see docs/deploy.md)"
        return
    fi
    install -d -m 0755 "$SELF_SIGNED_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 90 -subj "/CN=$DOMAIN" \
        -addext "subjectAltName=DNS:$DOMAIN" -addext "basicConstraints=critical,CA:FALSE" \
        -addext "keyUsage=critical,digitalSignature,keyEncipherment" -addext "extendedKeyUsage=serverAuth" \
        -keyout "$KEY.new" -out "$CERT.new" 2>/dev/null
    chmod 0600 "$KEY.new"
    mv "$KEY.new" "$KEY"
    mv "$CERT.new" "$CERT"
    say "certificate: new self-signed one for $DOMAIN in $SELF_SIGNED_DIR, so that nginx starts;"
    say "get a real one with certbot (docs/deploy.md, \"A real certificate\")"
}

nginx_running() { [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; }

step_nginx() {
    step "nginx: https://$DOMAIN/ (80 -> 443, TLS, catch-all 444)" \
        "read nginx's message above. A failed \`nginx -t\` puts the previous site files back; if nginx does not start, another program may hold port 80 or 443 (\`ss -ltnp\`)."
    local www f
    certificate
    www="$(nginx_user)"
    # nginx's workers reach run/gunicorn.sock, static/ and media/ through
    # $WEB_GROUP only; an older install had put them in the app's group,
    # which also reads .env, var/ and logs/.
    usermod -a -G "$WEB_GROUP" "$www"
    if id -nG "$www" | tr ' ' '\n' | grep -qx "$APP_USER"; then
        gpasswd -d "$www" "$APP_USER" >/dev/null
        say "$www left group $APP_USER (it read .env and var/)"
    fi
    say "$www in group $WEB_GROUP (reaches run/gunicorn.sock, static/, media/), not in $APP_USER"
    install -d -m 0755 /etc/nginx/snippets "$STATE_DIR"
    render_nginx "$NGINX_SITE" "$NGINX_LOCATIONS" "$NGINX_DEFAULT" "$CERT" "$KEY"
    [ -e /usr/lib/nginx/modules/ngx_http_brotli_static_module.so ] ||
        say "no brotli module (libnginx-mod-http-brotli-static): static files go out gzip only"
    nginx_files=("$NGINX_SITE" "$NGINX_LOCATIONS" "$NGINX_DEFAULT")
    for name in "${PAGE_CACHE_SNIPPETS[@]}"; do
        [ ! -e "/etc/nginx/snippets/$SLUG-$name.conf.new" ] || nginx_files+=("/etc/nginx/snippets/$SLUG-$name.conf")
    done
    # Every file gets a backup (snippets too), put back if nginx -t fails,
    # removed once it passes: no .bak outlives this step.
    for f in "${nginx_files[@]}"; do
        rm -f "$f.bak"
        if [ -e "$f" ]; then cp -p "$f" "$f.bak"; fi
        chmod 0644 "$f.new"
        mv "$f.new" "$f"
    done
    ln -sfn "$NGINX_SITE" "/etc/nginx/sites-enabled/$SLUG.conf"
    ln -sfn "$NGINX_DEFAULT" /etc/nginx/sites-enabled/000-socketstack-default.conf
    if [ -L /etc/nginx/sites-enabled/default ]; then
        # Its default_server would clash with the catch-all; uninstall.sh puts it back.
        rm /etc/nginx/sites-enabled/default
        touch "$STATE_DIR/debian-default-site-disabled"
        say "Debian's default site disabled (the catch-all replaces it)"
    fi
    if ! command nginx -t 2>"$STATE_DIR/nginx-t.log"; then
        cat "$STATE_DIR/nginx-t.log" >&2
        for f in "${nginx_files[@]}"; do
            if [ -e "$f.bak" ]; then mv "$f.bak" "$f"; else rm -f "$f"; fi
        done
        [ -e "$NGINX_SITE" ] || rm -f "/etc/nginx/sites-enabled/$SLUG.conf"
        false
    fi
    for f in "${nginx_files[@]}"; do rm -f "$f.bak"; done
    say "nginx -t: ok ($NGINX_SITE)"
    # A reload starts new workers, which pick up the new group membership.
    # It returns at once, while the old workers go on answering with the old
    # config for a while: remember them, and wait below until they are gone.
    local old_workers=""
    if nginx_running; then old_workers="$(nginx_workers)"; fi
    if has_systemd; then
        systemctl enable --quiet nginx
        if systemctl is-active --quiet nginx; then systemctl reload nginx; else systemctl start nginx; fi
    elif nginx_running; then
        command nginx -s reload 2>/dev/null
    else
        service nginx start >/dev/null 2>&1 || command nginx
    fi
    wait_old_workers "$old_workers"
    say "nginx $(nginx_running && echo running) (pid $(cat /run/nginx.pid 2>/dev/null))"
}

nginx_workers() {
    # The master's children: workers, cache manager and loader.
    pgrep -P "$(cat /run/nginx.pid)" | tr '\n' ' ' || true
}

wait_old_workers() {
    # The new config is live only once every process of the old one has exited.
    local pid alive
    [ -n "$1" ] || return 0
    for _ in $(seq 300); do
        alive=""
        for pid in $1; do
            if [ -d "/proc/$pid" ]; then alive="$alive $pid"; fi
        done
        if [ -z "$alive" ]; then
            say "nginx reloaded: the old workers ($1) have exited"
            return 0
        fi
        sleep 0.1
    done
    HINT="nginx kept its old workers ($alive) for 30 s: a failed reload leaves them serving the old config; see /var/log/nginx/error.log."
    say "old nginx workers still running after 30 s:$alive"
    return 1
}

step_healthz() {
    step "https://$DOMAIN/healthz and http://$DOMAIN/ (301 to https) through nginx" \
        "see $APP_ROOT/logs/gunicorn.log and /var/log/nginx/$SLUG.error.log (502: nginx cannot reach run/gunicorn.sock; no 301 on port 80: another site or program answers there)."
    # Both ports: port 443 is new with this site, but port 80 may still be
    # answered by an older config (Debian's default site) until the reload is done.
    local status="" redirect="" want="301 https://$DOMAIN/socketstack-probe"
    for _ in $(seq 150); do
        status="$(curl -s -o /dev/null -w '%{http_code}' -k --max-time 5 \
            --resolve "$DOMAIN:443:127.0.0.1" "https://$DOMAIN/healthz" || true)"
        redirect="$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' --max-time 5 \
            --resolve "$DOMAIN:80:127.0.0.1" "http://$DOMAIN/socketstack-probe" || true)"
        [ "$status" = "200" ] && [ "$redirect" = "$want" ] && break
        sleep 0.2
    done
    say "https://$DOMAIN/healthz: HTTP $status"
    say "http://$DOMAIN/socketstack-probe: $redirect"
    [ "$status" = "200" ] && [ "$redirect" = "$want" ]
}

# (3) A real certificate: LETSENCRYPT_EMAIL=... --------------------------------

acme_webroot_served() {
    # nginx serves APP_ROOT/var/acme on http://DOMAIN/.well-known/acme-challenge/
    # (a reload takes a moment to reach every worker): wait until it does.
    local dir="$APP_ROOT/var/acme/.well-known/acme-challenge" probe i answer=""
    # Group $WEB_GROUP: nginx's user reads the challenges through it (and nothing else of the app).
    install -d -m 2750 -g "$WEB_GROUP" "$APP_ROOT/var/acme/.well-known" "$dir"
    probe="socketstack-probe-$$"
    printf '%s' "$probe" >"$dir/$probe"
    chgrp "$WEB_GROUP" "$dir/$probe"
    for i in $(seq 50); do
        answer="$(curl -s --max-time 2 --resolve "$DOMAIN:80:127.0.0.1" \
            "http://$DOMAIN/.well-known/acme-challenge/$probe" || true)"
        [ "$answer" = "$probe" ] && break
        sleep 0.2
    done
    rm -f "$dir/$probe"
    [ "$answer" = "$probe" ]
}

acme_reason() {
    # certbot's reason in one line: the CA's "Type:"/"Detail:" lines, else its last error line.
    local log="$1" reason
    reason="$(sed -n -e 's/^ *Type: *\(.*\)/\1:/p' -e 's/^ *Detail: *//p' "$log" | paste -sd ' ' - | cut -c1-400)"
    [ -n "$reason" ] || reason="$({ grep -v -e '^ *$' -e 'community.letsencrypt.org' -e 'logfile' \
        -e '^Saving debug log' "$log" || true; } | tail -n 1 | cut -c1-400)"
    echo "${reason:-certbot exited with an error}"
}

acme_fix() {
    case "$1" in
    *rateLimited* | *"too many"* | *"rate limit"*)
        echo "the CA's rate limit was hit: wait until the time it names, and try changes against staging first (ACME_SERVER=https://acme-staging-v02.api.letsencrypt.org/directory)." ;;
    dns* | *NXDOMAIN* | *"DNS problem"* | *"no valid A records"* | *"No valid IP addresses"* | *"could not resolve"* | *"no such host"*)
        echo "DNS does not point here: give $DOMAIN an A (and AAAA) record with this server's address, check it with \`dig +short $DOMAIN\`, then run install.sh again." ;;
    connection* | timeout* | *"Timeout during connect"* | *"Connection refused"* | *"connection refused"* | *"Fetching"*)
        echo "the CA could not reach port 80: open TCP port 80 to the internet (firewall, cloud security group); certbot's check needs http://$DOMAIN/.well-known/acme-challenge/, then run install.sh again." ;;
    unauthorized*)
        echo "another machine answered for $DOMAIN: make its A/AAAA records point at this server only (\`dig +short $DOMAIN\`), then run install.sh again." ;;
    *)
        echo "read /var/log/letsencrypt/letsencrypt.log, fix the cause, then run install.sh again." ;;
    esac
}

serving_certificate() {
    # A reload reaches new connections only once the old workers are gone:
    # wait until port 443 hands out this certificate for DOMAIN.
    local want served="" i
    want="$(openssl x509 -noout -serial -in "$1")"
    for i in $(seq 100); do
        served="$(openssl s_client -connect 127.0.0.1:443 -servername "$DOMAIN" </dev/null 2>/dev/null |
            openssl x509 -noout -serial 2>/dev/null || true)"
        [ "$served" = "$want" ] && break
        sleep 0.1
    done
    say "nginx serves it: $served after $i tries"
    [ "$served" = "$want" ]
}

step_letsencrypt() {
    [ -n "$LETSENCRYPT_EMAIL" ] || return 0
    step "Let's Encrypt certificate for $DOMAIN (certbot --webroot, HTTP-01 on port 80)" \
        "see certbot's message above and /var/log/letsencrypt/letsencrypt.log."
    local hook log renewal="/etc/letsencrypt/renewal/$DOMAIN.conf" args=() reason started
    apt_install certbot
    # Renewal: Debian's certbot runs `certbot renew` twice a day, from its
    # systemd timer or, without systemd, /etc/cron.d/certbot.
    if has_systemd; then
        systemctl enable --now --quiet certbot.timer
        say "renewal: certbot.timer (systemd), twice a day"
    else
        say "renewal: /etc/cron.d/certbot, twice a day while cron runs (no systemd here)"
    fi
    if [ -s "$LETSENCRYPT_DIR/fullchain.pem" ] && grep -qxF "server = $ACME_SERVER" "$renewal" 2>/dev/null; then
        say "certificate exists: $LETSENCRYPT_DIR (until $(openssl x509 -enddate -noout -in "$LETSENCRYPT_DIR/fullchain.pem" | cut -d= -f2)); renewal keeps it fresh"
        return 0
    fi
    # Another CA than the existing certificate's (staging -> production): replace it.
    [ ! -s "$LETSENCRYPT_DIR/fullchain.pem" ] || args+=(--force-renewal)
    if ! acme_webroot_served; then
        ACME_FAILED="nginx does not serve $APP_ROOT/var/acme on http://$DOMAIN/.well-known/acme-challenge/ from this machine"
        echo "install.sh: ERROR: no certificate for $DOMAIN: $ACME_FAILED" >&2
        echo "install.sh: what to do: read /var/log/nginx/$SLUG.error.log, then run install.sh again." >&2
        return 0
    fi
    # The deploy hook runs after each renewal of this certificate (certbot keeps
    # it in $renewal): it reloads nginx, nothing else. certbot refuses a hook
    # whose first word is not on PATH, so it names only what this server has.
    if has_systemd; then hook="systemctl reload nginx"; else hook="nginx -s reload"; fi
    log="$APP_ROOT/logs/certbot.log"
    say "certbot certonly --webroot for $DOMAIN at $ACME_SERVER"
    started="$EPOCHREALTIME"
    if (umask 022 && env ${ACME_CA_BUNDLE:+REQUESTS_CA_BUNDLE="$ACME_CA_BUNDLE"} \
        certbot certonly --non-interactive --agree-tos --no-eff-email --email "$LETSENCRYPT_EMAIL" \
        --server "$ACME_SERVER" --webroot -w "$APP_ROOT/var/acme" -d "$DOMAIN" --cert-name "$DOMAIN" \
        --keep-until-expiring --deploy-hook "$hook" "${args[@]}") >"$log" 2>&1; then
        say "certificate: $LETSENCRYPT_DIR, issued in $(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s (until $(openssl x509 -enddate -noout -in "$LETSENCRYPT_DIR/fullchain.pem" | cut -d= -f2))"
        say "deploy hook after each renewal: $hook"
        step_nginx # certificate() now picks the Let's Encrypt one
        HINT="nginx was reloaded but still serves the old certificate: see /var/log/nginx/error.log."
        serving_certificate "$LETSENCRYPT_DIR/cert.pem"
        return 0
    fi
    # The site keeps the certificate it had: nginx was not touched.
    reason="$(acme_reason "$log")"
    ACME_FAILED="$reason"
    echo "install.sh: ERROR: certbot could not get a certificate for $DOMAIN: $reason" >&2
    echo "install.sh: what to do: $(acme_fix "$reason")" >&2
    say "the site stays up on $CERT (certbot's full output: $log)"
}

main() {
    preflight
    install_packages
    if [ "${LOCK_CHECK_LATER:-no}" = yes ]; then check_lock; fi
    if [ "$DATABASE" = "postgresql" ] && [ "$ROLE" = single ]; then step_postgresql; fi
    create_user
    make_layout
    sync_code
    make_venv
    write_env_file
    app_role_env
    if [ "$REDIS_MODE" = "system" ] && [ "$ROLE" = single ]; then system_redis; fi
    step_django
    step_retire_old_files
    step_supervisor
    step_nginx
    step_letsencrypt
    step_healthz
    printf '\ninstall.sh: done in %s s: https://%s/ (app root %s)\n' "$((SECONDS - STARTED))" "$DOMAIN" "$APP_ROOT"
    [ "${CERT:-}" = "$LETSENCRYPT_DIR/fullchain.pem" ] || [ -n "$ACME_FAILED" ] ||
        echo "install.sh: still on a self-signed certificate: run LETSENCRYPT_EMAIL=you@example.com deploy/install.sh for a real one."
    echo "install.sh: logs in $APP_ROOT/logs/ and /var/log/nginx/$SLUG.*.log; state: supervisorctl status '$SLUG:*'"
    if [ -n "$ACME_FAILED" ]; then
        echo "install.sh: FAILED to get a certificate for $DOMAIN (the site is up on $CERT): $ACME_FAILED" >&2
        exit 1
    fi
}

case "$ROLE" in
data) data_main ;; # deploy/roles.sh: Redis and PostgreSQL only
*) main ;;
esac
