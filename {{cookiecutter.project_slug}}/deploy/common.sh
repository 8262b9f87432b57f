# Sourced by deploy/install.sh and deploy/uninstall.sh (not run): the
# project's facts and the names of what they install, in one place.
# shellcheck shell=bash
# The variables below are used by the scripts that source this file.
# shellcheck disable=SC2034

# shellcheck source-path=SCRIPTDIR source=project.env
. "$(dirname "${BASH_SOURCE[0]}")/project.env"
APP_USER="$SLUG"
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

has_systemd() { [ -d /run/systemd/system ]; }

ctl() { supervisorctl -c /etc/supervisor/supervisord.conf "$@"; }

nginx_user() {
    # The `user` of Debian's nginx.conf (www-data unless someone changed it).
    local user
    user="$(awk '$1 == "user" { sub(/;$/, "", $2); print $2; exit }' /etc/nginx/nginx.conf 2>/dev/null || true)"
    echo "${user:-www-data}"
}
