#!/usr/bin/env bash
# Undo deploy/install.sh for this project: stop and remove the supervisor
# programs, the nginx site and the self-signed certificate, then the app root
# (code, venv, database, Redis data, uploads, env file) and the app's user and
# group. Debian's packages stay installed. With DATABASE=postgresql the
# database and its role live in Debian's cluster, outside APP_ROOT: they are
# kept unless --purge-data asks for them to be dropped.
#   sudo deploy/uninstall.sh               remove everything listed above
#   sudo deploy/uninstall.sh --keep-data   keep APP_ROOT and the user (reinstall later)
#   sudo deploy/uninstall.sh --purge-data  also drop the PostgreSQL database and role
set -Eeuo pipefail

# SLUG, DEFAULT_DOMAIN, APP_USER, WEB_GROUP, the nginx and supervisor paths,
# say, ctl, nginx_user.
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

fail() {
    echo "uninstall.sh: ERROR: $*" >&2
    exit 1
}
step() { printf '\n==> %s\n' "$*"; }

KEEP_DATA=no
PURGE_DATA=no
for arg in "$@"; do
    case "$arg" in
    --keep-data) KEEP_DATA=yes ;;
    --purge-data) PURGE_DATA=yes ;;
    *) fail "unknown argument '$arg': use deploy/uninstall.sh [--keep-data | --purge-data]" ;;
    esac
done
[ "$KEEP_DATA$PURGE_DATA" != yesyes ] ||
    fail "--keep-data and --purge-data contradict each other: give one of them."
[ "$(id -u)" -eq 0 ] || fail "must run as root: sudo deploy/uninstall.sh"
# ROLE=data removes the data tier (deploy/roles.sh); single and app, the site.
# shellcheck source-path=SCRIPTDIR source=roles.sh
. "$(dirname "${BASH_SOURCE[0]}")/roles.sh"
case "$ROLE" in
single | app) ;;
data)
    uninstall_data
    exit 0
    ;;
*) fail "ROLE='$ROLE' is not a role: give the one install.sh ran with (single, app or data)." ;;
esac

# The app root: APP_ROOT, else what install.sh wrote into supervisor's file.
if [ -z "${APP_ROOT:-}" ] && [ -f "$SUPERVISOR_CONF" ]; then
    APP_ROOT="$(sed -n 's/^directory=//p' "$SUPERVISOR_CONF" | head -n 1)"
fi
APP_ROOT="${APP_ROOT:-/webapps/$SLUG}"
DOMAIN="${DOMAIN:-$DEFAULT_DOMAIN}"
if [ -f "$NGINX_SITE" ]; then
    DOMAIN="$(awk '$1 == "server_name" { sub(/;$/, "", $2); print $2; exit }' "$NGINX_SITE")"
fi
echo "uninstall.sh: $SLUG ($DOMAIN) in $APP_ROOT, keep data: $KEEP_DATA, purge data: $PURGE_DATA"

step "supervisor: stop and remove $SLUG:*"
remove_supervisor_group "$SUPERVISOR_CONF" "$SLUG"
# Nothing of the app may outlive it: wait for its user's processes to end.
# Only this PID namespace's: a container on the same machine may have a user
# with the same uid, and its processes are not this site's.
app_pids() { pgrep --ns $$ --nslist pid -u "$APP_USER"; }
if id -u "$APP_USER" >/dev/null 2>&1; then
    for _ in $(seq 100); do
        app_pids >/dev/null || break
        sleep 0.2
    done
    if pids="$(app_pids)"; then
        say "still running as $APP_USER after 20 s, killing: $(echo "$pids" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
fi

step "nginx: remove the site"
# With the backups of an interrupted install.sh (.bak), if any.
rm -f "/etc/nginx/sites-enabled/$SLUG.conf" "$NGINX_SITE" "$NGINX_LOCATIONS" "$STATE_DIR/$SLUG.files" \
    /etc/nginx/snippets/"$SLUG"-locations.conf.bak /etc/nginx/snippets/"$SLUG"-page-cache*.conf \
    /etc/nginx/snippets/"$SLUG"-page-cache*.conf.bak "$NGINX_SITE.bak"
say "removed $NGINX_SITE and $NGINX_LOCATIONS"
if ! grep -qls "socketstack-site" /etc/nginx/sites-enabled/* 2>/dev/null; then
    # The last socketstack site: the catch-all goes too, Debian's default comes back.
    rm -f /etc/nginx/sites-enabled/000-socketstack-default.conf "$NGINX_DEFAULT"
    say "removed the catch-all (no other socketstack site left)"
    if [ -f "$STATE_DIR/debian-default-site-disabled" ] && [ -e /etc/nginx/sites-available/default ]; then
        ln -sfn /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default
        rm -f "$STATE_DIR/debian-default-site-disabled"
        say "Debian's default site enabled again"
    fi
    rm -f "$STATE_DIR/nginx-t.log"
    rmdir "$STATE_DIR" 2>/dev/null || true
fi
if [ -n "$DOMAIN" ] && [ -d "/etc/ssl/socketstack/$DOMAIN" ]; then
    rm -rf "/etc/ssl/socketstack/$DOMAIN"
    rmdir /etc/ssl/socketstack 2>/dev/null || true
    say "removed the self-signed certificate (Let's Encrypt's, if any, stay: certbot delete --cert-name $DOMAIN)"
fi
NGINX_USER="$(nginx_user)"
if getent group "$APP_USER" >/dev/null && id -nG "$NGINX_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$APP_USER"; then
    # An install from before group $WEB_GROUP (exact name: grep -w would match it too).
    gpasswd -d "$NGINX_USER" "$APP_USER" >/dev/null
    say "$NGINX_USER left group $APP_USER"
fi
if [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    if nginx -t 2>/dev/null; then
        if has_systemd; then systemctl reload nginx; else nginx -s reload; fi
        say "nginx reloaded"
    else
        say "WARNING: nginx -t fails (see \`nginx -t\`): nginx not reloaded"
    fi
fi

step "App root and user"
if [ "$KEEP_DATA" = yes ]; then
    say "--keep-data: $APP_ROOT and user $APP_USER kept"
else
    if [ -d "$APP_ROOT" ]; then
        # Only a directory that install.sh made: never rm -rf anything else.
        [ -f "$APP_ROOT/.socketstack-app" ] ||
            fail "$APP_ROOT has no .socketstack-app marker, so install.sh did not make it: remove it yourself if you mean to."
        rm -rf "$APP_ROOT"
        say "removed $APP_ROOT"
    fi
    if id -u "$APP_USER" >/dev/null 2>&1; then
        userdel "$APP_USER"
        say "user $APP_USER removed"
    fi
    if getent group "$APP_USER" >/dev/null; then
        groupdel "$APP_USER"
        say "group $APP_USER removed"
    fi
    if getent group "$WEB_GROUP" >/dev/null; then
        groupdel "$WEB_GROUP"
        say "group $WEB_GROUP removed (nginx's user left it)"
    fi
fi
if [ "$DATABASE" = "postgresql" ]; then
    step "PostgreSQL: database and role '$APP_USER'"
    read -r version name status <<<"$(pg_cluster)"
    cluster="$version/$name"
    if [ "$PURGE_DATA" = no ] && [[ "$status" == online* ]] && [ "$(pg_state "$cluster")" = "none|" ]; then
        echo "uninstall.sh: no PostgreSQL database or role '$SLUG' in cluster $cluster: nothing to keep."
    elif [ "$PURGE_DATA" = no ]; then
        # One line, whatever the cluster's state: the data is there to come back to.
        echo "uninstall.sh: the PostgreSQL database '$SLUG' and its role stay (cluster ${version:+$cluster on }port $PG_PORT); \`deploy/uninstall.sh --purge-data\` drops them."
    elif [ -z "$version" ] || [[ "$status" != online* ]]; then
        fail "--purge-data: no running PostgreSQL cluster on port $PG_PORT (pg_lsclusters), so database '$SLUG' was not dropped: start it (pg_ctlcluster ${version:-$(pg_server_version)} ${name:-main} start), then run deploy/uninstall.sh --purge-data again."
    else
        IFS='|' read -r role owner <<<"$(pg_state "$cluster")"
        # Only what install.sh made: its role, and a database that role owns.
        [ "$role" = ours ] || [ "$role" = none ] ||
            fail "--purge-data: PostgreSQL role '$SLUG' (cluster $cluster) is not the one install.sh made ($role), so nothing was dropped: drop it yourself if you mean to."
        [ -z "$owner" ] || [ "$owner" = "$SLUG" ] ||
            fail "--purge-data: PostgreSQL database '$SLUG' (cluster $cluster) is owned by '$owner', not '$SLUG', so nothing was dropped: drop it yourself if you mean to."
        pg_sql "$cluster" <<<'DROP DATABASE IF EXISTS :"slug"; DROP ROLE IF EXISTS :"slug";'
        echo "uninstall.sh: --purge-data: the PostgreSQL database '$SLUG' and its role are dropped (cluster $cluster)."
    fi
fi
echo
echo "uninstall.sh: done. Debian's packages (nginx, redis-server, supervisor, ...) stay installed."
