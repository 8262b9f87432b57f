# Sourced by deploy/install.sh and deploy/uninstall.sh (not run): the
# server roles beyond one box. ROLE=single (the default) is the whole stack
# on one server; ROLE=app runs nginx and gunicorn against Redis and
# PostgreSQL elsewhere; ROLE=data runs only Redis (cache, sessions with a
# replica and three Sentinels) and PostgreSQL, over TLS on a private address.
# See docs/deploy.md, "Moving the data off the box".
# shellcheck shell=bash
# Functions here call fail, step, say, ctl, apt_install, start_supervisor and
# service_do from the scripts that source this file.
# shellcheck disable=SC2154
# HINT is read by install.sh's error trap.
# shellcheck disable=SC2034

ROLE="${ROLE:-single}"
# ROLE=app: what install.sh writes into the env file (when given).
APP_ENV_NAMES=(REDIS_CACHE_URL REDIS_SESSIONS_URL REDIS_CACHE_SENTINELS REDIS_CACHE_SENTINEL_SERVICE
    REDIS_SESSIONS_SENTINELS REDIS_SESSIONS_SENTINEL_SERVICE REDIS_SENTINEL_PASSWORD REDIS_TLS_CA_FILE DATABASE_URL)
# ROLE=data: where its processes listen, its files and its names.
DATA_ADDRESS="${DATA_ADDRESS:-}"
DATA_ROOT="${DATA_ROOT:-/webapps/$SLUG-data}"
DATA_GROUP="$SLUG-data"
DATA_SUPERVISOR_CONF="/etc/supervisor/conf.d/$SLUG-data.conf"
REDIS_CACHE_PORT="${REDIS_CACHE_PORT:-6380}"
REDIS_SESSIONS_PORT="${REDIS_SESSIONS_PORT:-6381}"
POSTGRES_PORT="${POSTGRES_PORT:-5433}"
# Who may reach PostgreSQL (a pg_hba.conf address: samenet, or a CIDR such as 10.0.0.0/24).
POSTGRES_CLIENTS="${POSTGRES_CLIENTS:-samenet}"
DATA_TLS_CERT="${DATA_TLS_CERT:-}"
DATA_TLS_KEY="${DATA_TLS_KEY:-}"
DATA_TLS_CA="${DATA_TLS_CA:-}"

role_fail() { fail "$@"; }

valid_host_port() { [[ "$1" =~ ^[A-Za-z0-9.-]+:[0-9]{1,5}$ ]] && [ "${1##*:}" -ge 1 ] && [ "${1##*:}" -le 65535 ]; }

env_file_value() {
    # env_file_value NAME: NAME's value in the app's env file, if any.
    [ -r "$ENV_FILE" ] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1
}

validate_role() {
    case "$ROLE" in
    single) return 0 ;;
    app) validate_app_role ;;
    data) validate_data_role ;;
    *) role_fail "ROLE='$ROLE' is not a role: give ROLE=single (everything on this server, the default), ROLE=app (nginx and Django; Redis and PostgreSQL elsewhere) or ROLE=data (Redis and PostgreSQL only)." ;;
    esac
}

validate_app_role() {
    # The URLs come from the variables, else from the env file the operator filled in.
    local name value
    for name in REDIS_CACHE_URL REDIS_SESSIONS_URL; do
        value="${!name:-$(env_file_value "$name")}"
        case "$value" in
        "" | unix://*)
            role_fail "$name='$value': ROLE=app runs no Redis of its own: give $name=rediss://user:password@host:port/0 (the lines ROLE=data printed), on install.sh's command line or in $ENV_FILE." ;;
        redis://* | rediss://*) ;;
        *) role_fail "$name='$value' is not a Redis URL: give rediss://user:password@host:port/0 (or redis:// on a trusted network)." ;;
        esac
    done
    for name in REDIS_CACHE_SENTINELS REDIS_SESSIONS_SENTINELS; do
        value="${!name:-}"
        [ -n "$value" ] || continue
        local sentinel
        IFS=, read -ra sentinels <<<"$value"
        for sentinel in "${sentinels[@]}"; do
            valid_host_port "$sentinel" ||
                role_fail "$name='$value': '$sentinel' is not host:port: give every sentinel with its port, e.g. $name=10.0.0.5:26379,10.0.0.6:26379,10.0.0.7:26379."
        done
        local service="${name%SENTINELS}SENTINEL_SERVICE"
        [ -n "${!service:-$(env_file_value "$service")}" ] ||
            role_fail "$service='': $name needs the name the sentinels monitor: give $service=<name> (ROLE=data printed it)."
    done
    value="${REDIS_TLS_CA_FILE:-}"
    [ -z "$value" ] || [ -r "$value" ] ||
        role_fail "REDIS_TLS_CA_FILE='$value' is not a readable file: copy the data host's CA (ROLE=data printed its path) here and give its path."
    value="${DATABASE_URL:-}"
    # A postgresql bake's default URL is Debian's local socket, which an app host has not.
    if [ "$DATABASE" = postgresql ]; then
        case "${value:-$(env_file_value DATABASE_URL)}" in
        "" | postgres:///* | postgresql:///*)
            role_fail "DATABASE_URL='${value:-$(env_file_value DATABASE_URL)}': ROLE=app runs no PostgreSQL of its own: give DATABASE_URL=postgres://user:password@host:port/name?sslmode=verify-full&sslrootcert=/path (the line ROLE=data printed)." ;;
        esac
    fi
    case "$value" in
    "" | postgres://* | postgresql://* | sqlite://*) ;;
    *) role_fail "DATABASE_URL='$value' is not a database URL: give postgres://user:password@host:port/name?sslmode=verify-full&sslrootcert=/path (ROLE=data printed it)." ;;
    esac
}

validate_data_role() {
    [[ "$DATA_ADDRESS" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] ||
        role_fail "DATA_ADDRESS='$DATA_ADDRESS' is not an IPv4 address: give the private address app hosts reach this host on, e.g. DATA_ADDRESS=10.0.0.5 (never a public one)."
    REDIS_SESSIONS_REPLICA="${REDIS_SESSIONS_REPLICA:-$DATA_ADDRESS:$((REDIS_SESSIONS_PORT + 1))}"
    REDIS_SESSIONS_SENTINELS="${REDIS_SESSIONS_SENTINELS:-$DATA_ADDRESS:26379,$DATA_ADDRESS:26380,$DATA_ADDRESS:26381}"
    REDIS_SESSIONS_SENTINEL_SERVICE="${REDIS_SESSIONS_SENTINEL_SERVICE:-$SLUG-sessions}"
    local name value
    for name in REDIS_CACHE_PORT REDIS_SESSIONS_PORT POSTGRES_PORT; do
        value="${!name}"
        [[ "$value" =~ ^[0-9]{1,5}$ ]] && [ "$value" -ge 1 ] && [ "$value" -le 65535 ] ||
            role_fail "$name='$value' is not a port: give a number from 1 to 65535."
    done
    valid_host_port "$REDIS_SESSIONS_REPLICA" ||
        role_fail "REDIS_SESSIONS_REPLICA='$REDIS_SESSIONS_REPLICA' is not host:port: give the replica's private address and port, e.g. 10.0.0.6:6381."
    IFS=, read -ra SENTINELS <<<"$REDIS_SESSIONS_SENTINELS"
    for value in "${SENTINELS[@]}"; do
        valid_host_port "$value" ||
            role_fail "REDIS_SESSIONS_SENTINELS='$REDIS_SESSIONS_SENTINELS': '$value' is not host:port: give three, e.g. 10.0.0.5:26379,10.0.0.6:26379,10.0.0.7:26379."
    done
    [ "${#SENTINELS[@]}" -eq 3 ] ||
        role_fail "REDIS_SESSIONS_SENTINELS='$REDIS_SESSIONS_SENTINELS' names ${#SENTINELS[@]} sentinels: give three (a quorum of 2 survives losing one)."
    [[ "$REDIS_SESSIONS_SENTINEL_SERVICE" =~ ^[A-Za-z0-9_.-]+$ ]] ||
        role_fail "REDIS_SESSIONS_SENTINEL_SERVICE='$REDIS_SESSIONS_SENTINEL_SERVICE' is not a name: use letters, digits and ._- only."
    if [ -n "$DATA_TLS_CERT$DATA_TLS_KEY$DATA_TLS_CA" ]; then
        for name in DATA_TLS_CERT DATA_TLS_KEY DATA_TLS_CA; do
            [ -r "${!name}" ] ||
                role_fail "$name='${!name}' is not a readable file: give all three of DATA_TLS_CERT, DATA_TLS_KEY, DATA_TLS_CA (PEM), or none for a CA made here."
        done
    fi
    [[ "$DATA_ROOT" =~ ^/[A-Za-z0-9._/-]+$ ]] && [[ "$DATA_ROOT" != *..* ]] ||
        role_fail "DATA_ROOT='$DATA_ROOT' must be an absolute path of letters, digits and ._-/ only, e.g. /webapps/$SLUG-data."
}

# ROLE=app ---------------------------------------------------------------------

app_role_env() {
    # The variables given to install.sh replace their lines in the env file
    # (or are added); the rest of it stays as the operator left it.
    [ "$ROLE" = app ] || return 0
    step "Env file: data tier URLs (ROLE=app)" "check that $ENV_FILE is writable by root."
    local name value changed=no tmp
    tmp="$(mktemp "$APP_ROOT/.env.XXXXXX")"
    cp -p "$ENV_FILE" "$tmp"
    for name in "${APP_ENV_NAMES[@]}"; do
        value="${!name:-}"
        [ -n "$value" ] || continue
        [ "$(env_file_value "$name")" != "$value" ] || continue
        grep -v "^$name=" "$tmp" >"$tmp.next" || true
        printf '%s=%s\n' "$name" "$value" >>"$tmp.next"
        cat "$tmp.next" >"$tmp"
        rm -f "$tmp.next"
        changed=yes
        say "$name set"
    done
    if [ "$changed" = yes ]; then
        mv "$tmp" "$ENV_FILE"
    else
        rm -f "$tmp"
        say "unchanged: the data tier URLs in $ENV_FILE are the ones given (or none were given)"
    fi
    value="$(env_file_value REDIS_TLS_CA_FILE)"
    if [ -n "$value" ]; then
        HINT="make $value readable by $APP_USER (a CA certificate is public: mode 0644)."
        runuser -u "$APP_USER" -- test -r "$value"
    fi
    say "Redis cache: $(env_file_value REDIS_CACHE_URL | sed -E 's|//([^:@/]*):[^@]*@|//\1:***@|')"
    say "Redis sessions: $(env_file_value REDIS_SESSIONS_URL | sed -E 's|//([^:@/]*):[^@]*@|//\1:***@|')"
    say "database: $(env_file_value DATABASE_URL | sed -E 's|//([^:@/]*):[^@]*@|//\1:***@|')"
}

# ROLE=data --------------------------------------------------------------------

is_local_address() {
    # Processes listen only where their address belongs to this host.
    python3 -c 'import socket, sys; socket.socket().bind((sys.argv[1], 0))' "$1" 2>/dev/null
}

data_preflight() {
    validate_role
    [ "$(id -u)" -eq 0 ] || fail "must run as root: sudo ROLE=data deploy/install.sh"
    check_release
    trap on_error ERR
    echo "install.sh: ROLE=data for $SLUG on $DATA_ADDRESS (files in $DATA_ROOT)"
}

data_layout() {
    step "Data root $DATA_ROOT" "check that $(dirname "$DATA_ROOT") is a local, writable file system."
    local spec dir mode owner group
    # The CA and the server certificate are public; each key is readable by one service.
    for spec in ".:0755:root:root" "tls:0755:root:root" "generated:0700:root:root" "logs:0750:root:root" \
        "redis:0750:redis:redis"; do
        IFS=: read -r dir mode owner group <<<"$spec"
        install -d -m "$mode" -o "$owner" -g "$group" "$DATA_ROOT/$dir"
    done
    [ -f "$DATA_ROOT/.socketstack-data" ] ||
        printf 'socketstack data root of %s; ROLE=data deploy/uninstall.sh deletes this directory\n' "$SLUG" >"$DATA_ROOT/.socketstack-data"
    say "$DATA_ROOT: tls/ (public certificates, one key per service), redis/ (redis's), secrets.env (root, 0600)"
}

data_secrets() {
    step "Secrets $DATA_ROOT/secrets.env (written once, 0600)" "check that $DATA_ROOT is writable by root."
    local file="$DATA_ROOT/secrets.env" name added=()
    [ -e "$file" ] || install -m 0600 /dev/null "$file"
    for name in REDIS_APP_PASSWORD REDIS_REPLICATION_PASSWORD REDIS_SENTINEL_USER_PASSWORD REDIS_SENTINEL_PASSWORD POSTGRES_PASSWORD; do
        grep -q "^$name=" "$file" && continue
        printf '%s=%s\n' "$name" "$(openssl rand -hex 24)" >>"$file"
        added+=("$name")
    done
    # shellcheck disable=SC1090
    . "$file"
    if [ ${#added[@]} -eq 0 ]; then say "kept: every secret exists"; else say "new: ${added[*]}"; fi
}

data_addresses() {
    # Every address a certificate must name: this host's and the other data hosts'.
    local all=("$DATA_ADDRESS" "${REDIS_SESSIONS_REPLICA%:*}") s
    for s in "${SENTINELS[@]}"; do all+=("${s%:*}"); done
    printf '%s\n' "${all[@]}" | sort -u
}

data_tls() {
    step "TLS certificates $DATA_ROOT/tls" "see openssl's message above."
    local dir="$DATA_ROOT/tls" san service f
    if [ -n "$DATA_TLS_CERT" ]; then
        install -m 0644 "$DATA_TLS_CA" "$dir/ca.pem.new"
        install -m 0644 "$DATA_TLS_CERT" "$dir/server.pem.new"
        install -m 0600 "$DATA_TLS_KEY" "$dir/server.key.new"
        for f in ca.pem server.pem server.key; do
            if cmp -s "$dir/$f.new" "$dir/$f"; then rm "$dir/$f.new"; else mv "$dir/$f.new" "$dir/$f"; fi
        done
        say "the operator's certificate ($DATA_TLS_CERT), key and CA ($DATA_TLS_CA)"
    else
        if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
            openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$SLUG data tier CA" \
                -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
                -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
            chmod 0600 "$dir/ca.key"
            chmod 0644 "$dir/ca.pem"
            say "new CA: $dir/ca.pem (its key stays in $dir/ca.key, root only)"
        fi
        san="$(data_addresses | sed 's/^/IP:/' | paste -sd, -)"
        if [ -s "$dir/server.pem" ] && [ -s "$dir/server.key" ] && openssl x509 -checkend 2592000 -noout -in "$dir/server.pem" >/dev/null &&
            [ "$(openssl x509 -noout -ext subjectAltName -in "$dir/server.pem" | tail -n 1 | tr -d ' ' | sed 's/IPAddress:/IP:/g')" = "$san" ]; then
            say "server certificate kept ($san, until $(openssl x509 -enddate -noout -in "$dir/server.pem" | cut -d= -f2))"
        else
            openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$DATA_ADDRESS" -keyout "$dir/server.key" 2>/dev/null |
                openssl x509 -req -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 825 \
                    -extfile <(printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' "$san") \
                    -out "$dir/server.pem" 2>/dev/null
            chmod 0600 "$dir/server.key"
            chmod 0644 "$dir/server.pem"
            say "server certificate for $san, signed by $dir/ca.pem (825 days)"
        fi
    fi
    # One copy of the key per service account (PostgreSQL insists on owning or root:group 0640).
    for service in redis postgres; do
        install -m 0640 -o root -g "$service" "$dir/server.key" "$dir/$service.key.new"
        if cmp -s "$dir/$service.key.new" "$dir/$service.key"; then rm "$dir/$service.key.new"; else mv "$dir/$service.key.new" "$dir/$service.key"; fi
    done
}

write_if_changed() {
    # write_if_changed NAME TARGET OWNER MODE < content: TARGET gets the content
    # when it differs from what this script wrote last time (kept in
    # generated/NAME): Redis and Sentinel rewrite their own files (CONFIG
    # REWRITE, failovers), and a run with the same settings must leave those alone.
    local name=$1 target=$2 owner=$3 mode=$4 new="$DATA_ROOT/generated/$1.new"
    cat >"$new"
    if [ -e "$target" ] && cmp -s "$new" "$DATA_ROOT/generated/$name"; then
        rm -f "$new"
        return 1
    fi
    install -m "$mode" -o "$owner" -g "$owner" "$new" "$target"
    mv "$new" "$DATA_ROOT/generated/$name"
    return 0
}

tls_listener() {
    # tls_listener ADDRESS PORT: the lines that make a Redis or a Sentinel speak
    # only TLS, only on ADDRESS (the certificate is the data host's, see data_tls).
    local address=$1 port=$2 tls="$DATA_ROOT/tls"
    cat <<CONF
bind $address
protected-mode yes
port 0
tls-port $port
tls-cert-file $tls/server.pem
tls-key-file $tls/redis.key
tls-ca-cert-file $tls/ca.pem
tls-auth-clients no
tls-replication yes
CONF
}

redis_data_conf() {
    # redis_data_conf BASE ADDRESS PORT [PRIMARY]: deploy/redis/BASE.conf (eviction,
    # persistence) plus TLS on ADDRESS:PORT, ACL users and, for a replica, its primary.
    local base=$1 address=$2 port=$3 primary=${4:-}
    if [ -f "$SRC/deploy/redis/$base.conf" ]; then
        cat "$SRC/deploy/redis/$base.conf"
    elif [ "$base" = cache ]; then
        # A redis=system bake has no deploy/redis/: the same policies as a dedicated one's.
        printf '%s\n' "# The cache: evicts, keeps nothing on disk." "daemonize no" "supervised no" 'logfile ""' \
            "maxmemory 128mb" "maxmemory-policy allkeys-lru" 'save ""' "appendonly no"
    else
        printf '%s\n' "# The sessions: never evicts, append-only file." "daemonize no" "supervised no" 'logfile ""' \
            "maxmemory 256mb" "maxmemory-policy noeviction" "appendonly yes" "appendfsync everysec" 'save ""'
    fi
    printf '\n# ROLE=data (deploy/install.sh): TLS only, on the private address.\n'
    tls_listener "$address" "$port"
    cat <<CONF
dir $DATA_ROOT/redis/$base-$port
# ACL users: the app, replication and the sentinels; no default user.
user default off resetpass -@all
user $SLUG on >$REDIS_APP_PASSWORD ~* &* +@all -@admin
user replication on >$REDIS_REPLICATION_PASSWORD +psync +replconf +ping
user sentinel on >$REDIS_SENTINEL_USER_PASSWORD allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill
masteruser replication
masterauth $REDIS_REPLICATION_PASSWORD
replica-announce-ip $address
replica-announce-port $port
CONF
    [ -z "$primary" ] || printf 'replicaof %s %s\n' "${primary%:*}" "${primary##*:}"
}

sentinel_conf() {
    # sentinel_conf ADDRESS PORT: one of the three Sentinels of the sessions Redis.
    local address=$1 port=$2
    cat <<CONF
# Sentinel $address:$port for $REDIS_SESSIONS_SENTINEL_SERVICE, written by deploy/install.sh
# (ROLE=data). Sentinel rewrites this file itself (known replicas, epochs).
CONF
    tls_listener "$address" "$port"
    cat <<CONF
daemonize no
logfile ""
dir $DATA_ROOT/redis/sentinel-$port
requirepass $REDIS_SENTINEL_PASSWORD
sentinel sentinel-pass $REDIS_SENTINEL_PASSWORD
sentinel announce-ip $address
sentinel announce-port $port
sentinel monitor $REDIS_SESSIONS_SENTINEL_SERVICE $DATA_ADDRESS $REDIS_SESSIONS_PORT 2
sentinel auth-user $REDIS_SESSIONS_SENTINEL_SERVICE sentinel
sentinel auth-pass $REDIS_SESSIONS_SENTINEL_SERVICE $REDIS_SENTINEL_USER_PASSWORD
sentinel down-after-milliseconds $REDIS_SESSIONS_SENTINEL_SERVICE 5000
sentinel failover-timeout $REDIS_SESSIONS_SENTINEL_SERVICE 30000
sentinel parallel-syncs $REDIS_SESSIONS_SENTINEL_SERVICE 1
CONF
}

data_program() {
    # data_program NAME CONF [ARGS]: one supervisor program, run as redis.
    cat <<PROGRAM

[program:$SLUG-data-$1]
command=/usr/bin/redis-server $2${3:+ $3}
directory=$DATA_ROOT/redis
user=redis
environment=HOME="$DATA_ROOT/redis",LANG="C.UTF-8"
priority=100
autorestart=true
; Redis fsyncs the append-only file on TERM; give it time to.
stopwaitsecs=30
stdout_logfile=$DATA_ROOT/logs/$1.log
redirect_stderr=true
PROGRAM
}

data_redis() {
    step "Redis: cache, sessions, its replica and three Sentinels (TLS, ACL users)" \
        "see $DATA_ROOT/logs/*.log; \`supervisorctl status $DATA_GROUP:*\` shows the state."
    local programs=() changed=() name conf address port i supervisor_new
    # name:base:address:port[:primary]
    local specs=("cache:cache:$DATA_ADDRESS:$REDIS_CACHE_PORT" "sessions:sessions:$DATA_ADDRESS:$REDIS_SESSIONS_PORT"
        "sessions-replica:sessions:$REDIS_SESSIONS_REPLICA:$DATA_ADDRESS:$REDIS_SESSIONS_PORT")
    supervisor_new="$(mktemp)"
    printf '; Written by deploy/install.sh (ROLE=data): run it again rather than editing this copy.\n; No secrets here: they are in the config files under %s/redis.\n' "$DATA_ROOT" >"$supervisor_new"
    local spec base primary
    for spec in "${specs[@]}"; do
        IFS=: read -r name base address port primary <<<"$spec"
        if ! is_local_address "$address"; then
            say "$name ($address:$port): another host's address, not run here"
            continue
        fi
        install -d -m 0750 -o redis -g redis "$DATA_ROOT/redis/$base-$port"
        conf="$DATA_ROOT/redis/$name.conf"
        if redis_data_conf "$base" "$address" "$port" "$primary" | write_if_changed "$name.conf" "$conf" redis 0600; then
            changed+=("$SLUG-data-$name")
        fi
        data_program "$name" "$conf" >>"$supervisor_new"
        programs+=("$SLUG-data-$name")
        say "$name: rediss://$address:$port (deploy/redis/$base.conf${primary:+, replica of $primary})"
    done
    i=0
    for spec in "${SENTINELS[@]}"; do
        i=$((i + 1))
        address="${spec%:*}"
        port="${spec##*:}"
        if ! is_local_address "$address"; then
            say "sentinel-$i ($spec): another host's address, not run here"
            continue
        fi
        install -d -m 0750 -o redis -g redis "$DATA_ROOT/redis/sentinel-$port"
        conf="$DATA_ROOT/redis/sentinel-$port/sentinel.conf"
        if sentinel_conf "$address" "$port" | write_if_changed "sentinel-$i.conf" "$conf" redis 0600; then
            changed+=("$SLUG-data-sentinel-$i")
        fi
        data_program "sentinel-$i" "$conf" --sentinel >>"$supervisor_new"
        programs+=("$SLUG-data-sentinel-$i")
        say "sentinel-$i: $spec, monitors $REDIS_SESSIONS_SENTINEL_SERVICE (quorum 2)"
    done
    if [ ${#programs[@]} -gt 0 ]; then
        printf '\n[group:%s]\nprograms=%s\n' "$DATA_GROUP" "$(IFS=,; echo "${programs[*]}")" >>"$supervisor_new"
    fi
    start_supervisor
    install_supervisor_conf "$supervisor_new" "$DATA_SUPERVISOR_CONF"
    ctl reread | sed 's/^/    /'
    ctl update | sed 's/^/    /'
    for name in "${changed[@]}"; do
        # A program whose config file changed but whose supervisor entry did not.
        ctl status "$DATA_GROUP:$name" 2>/dev/null | grep -q RUNNING && ctl restart "$DATA_GROUP:$name" | sed 's/^/    /'
    done
    [ ${#changed[@]} -gt 0 ] || say "no config changed: nothing restarted"
    ctl start "$DATA_GROUP:*" >/dev/null 2>&1 || true
    data_wait_redis
}

data_wait_redis() {
    # Each local Redis answers PING over TLS as the app user; the sentinels know the primary.
    local spec address port answer
    for spec in "$DATA_ADDRESS:$REDIS_CACHE_PORT" "$DATA_ADDRESS:$REDIS_SESSIONS_PORT" "$REDIS_SESSIONS_REPLICA"; do
        address="${spec%:*}"
        port="${spec##*:}"
        is_local_address "$address" || continue
        for _ in $(seq 100); do
            answer="$(REDISCLI_AUTH="$REDIS_APP_PASSWORD" redis-cli --tls --cacert "$DATA_ROOT/tls/ca.pem" \
                -h "$address" -p "$port" --user "$SLUG" --no-auth-warning ping 2>/dev/null || true)"
            [ "$answer" = PONG ] && break
            sleep 0.2
        done
        say "rediss://$SLUG@$spec: ${answer:-no answer}"
        [ "$answer" = PONG ] || { HINT="see $DATA_ROOT/logs/*.log"; false; }
    done
    for spec in "${SENTINELS[@]}"; do
        is_local_address "${spec%:*}" || continue
        for _ in $(seq 100); do
            answer="$(REDISCLI_AUTH="$REDIS_SENTINEL_PASSWORD" redis-cli --tls --cacert "$DATA_ROOT/tls/ca.pem" \
                -h "${spec%:*}" -p "${spec##*:}" --no-auth-warning sentinel get-master-addr-by-name \
                "$REDIS_SESSIONS_SENTINEL_SERVICE" 2>/dev/null | paste -sd: - || true)"
            [ -n "$answer" ] && break
            sleep 0.2
        done
        say "sentinel $spec: $REDIS_SESSIONS_SENTINEL_SERVICE is at ${answer:-?}"
        [ -n "$answer" ] || { HINT="see $DATA_ROOT/logs/sentinel-*.log"; false; }
    done
}

postgres_version() {
    # This site's cluster where one exists: after a Debian upgrade it stays on
    # the old version (15) until pg_upgradecluster; else the newest server.
    local existing
    existing="$(pg_lsclusters -h 2>/dev/null | awk -v name="$SLUG" '$2 == name { print $1; exit }')"
    echo "${existing:-$(pg_server_version)}"
}

data_postgres() {
    step "PostgreSQL: cluster '$SLUG' on $DATA_ADDRESS:$POSTGRES_PORT (TLS, scram-sha-256)" \
        "see /var/log/postgresql/postgresql-*-$SLUG.log."
    if ! is_local_address "$DATA_ADDRESS"; then
        say "$DATA_ADDRESS is another host's address: no PostgreSQL here"
        return 0
    fi
    apt_install postgresql
    local version dir restart=no
    version="$(postgres_version)"
    dir="/etc/postgresql/$version/$SLUG"
    # A cluster of its own: Debian's default one (main, 5432) stays as it is.
    if [ ! -f "$dir/postgresql.conf" ]; then
        pg_createcluster -p "$POSTGRES_PORT" "$version" "$SLUG" -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
        say "cluster $version/$SLUG created (pg_createcluster), port $POSTGRES_PORT"
    fi
    install -d -m 0755 -o postgres -g postgres "$dir/conf.d"
    if write_if_changed postgresql.conf "$dir/conf.d/socketstack.conf" postgres 0644 <<CONF; then restart=yes; fi
# Written by deploy/install.sh (ROLE=data).
listen_addresses = '$DATA_ADDRESS'
ssl = on
ssl_cert_file = '$DATA_ROOT/tls/server.pem'
ssl_key_file = '$DATA_ROOT/tls/postgres.key'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
CONF
    if write_if_changed pg_hba.conf "$dir/pg_hba.conf" postgres 0640 <<CONF; then restart=yes; fi
# Written by deploy/install.sh (ROLE=data): the app over TLS with a password, nothing else.
local   all       postgres                   peer
hostssl $SLUG $SLUG $POSTGRES_CLIENTS scram-sha-256
CONF
    if pg_ctlcluster "$version" "$SLUG" status >/dev/null 2>&1; then
        if [ "$restart" = yes ]; then
            pg_ctlcluster "$version" "$SLUG" restart
            say "restarted: its settings changed"
        else
            say "running, settings unchanged"
        fi
    elif has_systemd; then
        systemctl enable --quiet "postgresql@$version-$SLUG"
        systemctl start "postgresql@$version-$SLUG"
    else
        pg_ctlcluster "$version" "$SLUG" start
    fi
    # Role and database once; the password is the one in secrets.env.
    runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$POSTGRES_PORT" -d postgres <<SQL
SELECT 'CREATE ROLE "$SLUG" LOGIN PASSWORD ''$POSTGRES_PASSWORD'''
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$SLUG') \gexec
SELECT 'CREATE DATABASE "$SLUG" OWNER "$SLUG"'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$SLUG') \gexec
SQL
    say "role and database $SLUG; hostssl only, scram-sha-256, from $POSTGRES_CLIENTS"
}

data_app_env() {
    # The lines an app host's env file needs, kept in app.env (0600: passwords).
    local ca="$DATA_ROOT/tls/ca.pem" file="$DATA_ROOT/app.env" auth="$SLUG:$REDIS_APP_PASSWORD"
    cat >"$file.new" <<ENV
REDIS_CACHE_URL=rediss://$auth@$DATA_ADDRESS:$REDIS_CACHE_PORT/0
REDIS_SESSIONS_URL=rediss://$auth@$DATA_ADDRESS:$REDIS_SESSIONS_PORT/0
REDIS_SESSIONS_SENTINELS=$REDIS_SESSIONS_SENTINELS
REDIS_SESSIONS_SENTINEL_SERVICE=$REDIS_SESSIONS_SENTINEL_SERVICE
REDIS_SENTINEL_PASSWORD=$REDIS_SENTINEL_PASSWORD
REDIS_TLS_CA_FILE=$ca
DATABASE_URL=postgres://$SLUG:$POSTGRES_PASSWORD@$DATA_ADDRESS:$POSTGRES_PORT/$SLUG?sslmode=verify-full&sslrootcert=$ca
ENV
    chmod 0600 "$file.new"
    if cmp -s "$file.new" "$file"; then rm "$file.new"; else mv "$file.new" "$file"; fi
    printf '\ninstall.sh: ROLE=data done in %s s. An app host needs these lines in its .env\n' "$((SECONDS - STARTED))"
    echo "(also in $file, mode 0600; copy $ca to the app host, at the same path or change the two paths):"
    echo
    cat "$file"
    echo
    echo "install.sh: then on the app host: ROLE=app deploy/install.sh (see docs/deploy.md, \"Moving the data off the box\")."
}

data_main() {
    data_preflight
    step "Debian packages" "check the apt sources and the network (apt-get update), then run again."
    apt_install redis-server supervisor openssl python3
    data_layout
    data_secrets
    data_tls
    data_redis
    data_postgres
    data_app_env
}

# uninstall.sh -------------------------------------------------------------------

uninstall_data() {
    # ROLE=data deploy/uninstall.sh [--keep-data]: the data tier's programs and cluster.
    local version
    echo "uninstall.sh: ROLE=data for $SLUG in $DATA_ROOT, keep data: $KEEP_DATA"
    step "supervisor: stop and remove $DATA_GROUP:*"
    remove_supervisor_group "$DATA_SUPERVISOR_CONF" "$DATA_GROUP"
    step "PostgreSQL cluster $SLUG"
    version="$(postgres_version)"
    if [ -n "$version" ] && [ -d "/etc/postgresql/$version/$SLUG" ]; then
        if [ "$KEEP_DATA" = yes ]; then
            pg_ctlcluster "$version" "$SLUG" stop 2>/dev/null || true
            say "--keep-data: cluster $version/$SLUG stopped and kept"
        else
            if [ -f "/etc/postgresql/$version/$SLUG/postgresql.conf" ]; then pg_dropcluster --stop "$version" "$SLUG"; fi
            # pg_dropcluster leaves what it did not write (conf.d/socketstack.conf).
            rm -rf "/etc/postgresql/$version/$SLUG"
            say "cluster $version/$SLUG dropped"
        fi
    else
        say "no cluster $SLUG"
    fi
    step "Data root"
    if [ "$KEEP_DATA" = yes ]; then
        say "--keep-data: $DATA_ROOT kept (Redis data, secrets, certificates)"
    elif [ -d "$DATA_ROOT" ]; then
        [ -f "$DATA_ROOT/.socketstack-data" ] ||
            fail "$DATA_ROOT has no .socketstack-data marker, so install.sh did not make it: remove it yourself if you mean to."
        rm -rf "$DATA_ROOT"
        say "removed $DATA_ROOT"
    fi
    echo
    echo "uninstall.sh: done. Debian's packages (redis-server, postgresql, supervisor, ...) stay installed."
}
