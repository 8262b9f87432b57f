# Sourced by deploy/install.sh and deploy/uninstall.sh (not run): the
# project's facts and the names of what they install, in one place.
# shellcheck shell=bash
# The variables below are used by the scripts that source this file.
# shellcheck disable=SC2034

# shellcheck source-path=SCRIPTDIR source=project.env
. "$(dirname "${BASH_SOURCE[0]}")/project.env"
APP_USER="$SLUG"
# Projects baked before the database choice have no DATABASE line.
DATABASE="${DATABASE:-sqlite}"
# nginx's user joins only this group: it owns the gate to run/ (gunicorn.sock),
# static/, media/, var/acme/ and the 50x page, nothing else of the app.
WEB_GROUP="$SLUG-web"
SUPERVISOR_CONF="/etc/supervisor/conf.d/$SLUG.conf"
NGINX_SITE="/etc/nginx/sites-available/$SLUG.conf"
NGINX_LOCATIONS="/etc/nginx/snippets/$SLUG-locations.conf"
NGINX_DEFAULT="/etc/nginx/sites-available/000-socketstack-default.conf"
STATE_DIR="/var/lib/socketstack"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

say() { printf '    %s\n' "$*"; }

check_release() {
    # The releases install.sh is tested on: Debian 12 (bookworm) and 13 (trixie).
    # Another one (or Ubuntu, which also has /etc/debian_version) may name its
    # packages, paths or defaults differently: stop before anything changes.
    local release="${SOCKETSTACK_OS_RELEASE:-/etc/os-release}" id="" version="" name=""
    if [ -r "$release" ]; then
        # shellcheck disable=SC1090
        id="$(. "$release" && echo "${ID:-}")"
        version="$(. "$release" && echo "${VERSION_ID:-}")"
        name="$(. "$release" && echo "${PRETTY_NAME:-$ID $VERSION_ID}")"
    fi
    case "$id:$version" in
    debian:12 | debian:13) return 0 ;;
    esac
    fail "this system is ${name:-unknown (no $release)}: $(basename "$0") supports Debian 12 (bookworm) and Debian 13 (trixie) only: run it on one of those."
}

has_systemd() { [ -d /run/systemd/system ]; }

ctl() { supervisorctl -c /etc/supervisor/supervisord.conf "$@"; }

remove_supervisor_group() {
    # remove_supervisor_group CONF GROUP (uninstall.sh): stop GROUP first
    # (graceful: gunicorn finishes its requests, Redis saves), then let
    # supervisor forget it.
    if [ ! -f "$1" ]; then
        say "no $1"
        return
    fi
    rm -f "$1"
    if ctl pid >/dev/null 2>&1; then
        ctl stop "$2:*" 2>&1 | sed 's/^/    /' || true
        ctl reread 2>&1 | sed 's/^/    /' || true
        ctl update 2>&1 | sed 's/^/    /' || true
    else
        say "supervisord is not running: nothing to stop"
    fi
    say "removed $1"
}

nginx_user() {
    # The `user` of Debian's nginx.conf (www-data unless someone changed it).
    local user
    user="$(awk '$1 == "user" { sub(/;$/, "", $2); print $2; exit }' /etc/nginx/nginx.conf 2>/dev/null || true)"
    echo "${user:-www-data}"
}

# PostgreSQL (DATABASE=postgresql): Debian's cluster on the default port. The
# app connects to it by peer authentication over its socket in PG_SOCKET_DIR
# (OS user <slug> = role <slug>), so no password exists anywhere. The comment
# on the role tells install.sh and uninstall.sh that the role is this site's.
PG_PORT=5432
PG_SOCKET_DIR=/var/run/postgresql
PG_MARKER="socketstack: the role of the site $SLUG (deploy/install.sh)"

pg_cluster() {
    # "VERSION NAME STATUS" of the cluster on port PG_PORT (pg_lsclusters), or nothing.
    command -v pg_lsclusters >/dev/null || return 0
    pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4; exit }'
}

pg_server_version() {
    # The newest installed PostgreSQL server's major version (Debian 12: 15,
    # Debian 13: 17); a directory with only the client programs does not count.
    find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
        awk -F/ '{ print $5 }' | sort -V | tail -n 1
}

pg_sql() {
    # pg_sql VERSION/NAME < SQL: psql as postgres on that cluster, in the
    # database postgres, unaligned tuples; :'slug', :"slug" and :'marker' quote.
    (cd / && runuser -u postgres -- psql --cluster "$1" -X -q -At -v ON_ERROR_STOP=1 \
        -v slug="$SLUG" -v marker="$PG_MARKER" -d postgres)
}

pg_state() {
    # pg_state VERSION/NAME: "ROLE|OWNER": ROLE is none, ours, superuser or
    # foreign (exists without install.sh's comment); OWNER is the owner of the
    # database named like the role, empty when there is none.
    pg_sql "$1" <<'SQL'
SELECT coalesce((SELECT CASE WHEN rolsuper THEN 'superuser'
                             WHEN shobj_description(oid, 'pg_authid') IS DISTINCT FROM :'marker' THEN 'foreign'
                             ELSE 'ours' END
                 FROM pg_roles WHERE rolname = :'slug'), 'none')
       || '|' || coalesce((SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :'slug'), '');
SQL
}
