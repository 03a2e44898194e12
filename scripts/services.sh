#!/usr/bin/env bash
# Make sure the services mailq needs for development and tests answer locally:
#
#   PostgreSQL  127.0.0.1:5432  role/database "mailq" (password "mailq")
#   RabbitMQ    127.0.0.1:5672  vhost "mailq_test" (guest has full permissions)
#   Redis       127.0.0.1:6379
#
# Idempotent: when everything is already up and provisioned it only probes
# (well under a second). A service that is installed but stopped is started;
# a missing one is installed with apt-get when running as root on
# Debian/Ubuntu, otherwise the script fails and says how to install it.
# Works without systemd (no "systemctl" calls).
#
# Usage: scripts/services.sh [--with-smtp-sink] [--with-browser]
#   --with-smtp-sink  also make sure Postfix's smtp-sink (/usr/sbin/smtp-sink,
#                     Debian package "postfix") is installed; postfix itself
#                     is not configured or started.
#   --with-browser    also make sure Debian's Chromium (/usr/bin/chromium) is
#                     installed: the browser tests drive it headless with
#                     Playwright (which would otherwise download a browser).
# Environment:
#   SERVICES_QUIET=1  print nothing on success (errors/warnings still go to stderr)
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

PROG=services.sh
PG_HOST=127.0.0.1 PG_PORT=5432
RMQ_HOST=127.0.0.1 RMQ_PORT=5672 RMQ_MGMT_PORT=15672
REDIS_HOST=127.0.0.1 REDIS_PORT=6379
DB_USER=mailq DB_PASSWORD=mailq DB_NAME=mailq
RMQ_VHOST=mailq_test
RMQ_START_TIMEOUT=90
PG_START_TIMEOUT=30
REDIS_START_TIMEOUT=15

WITH_SMTP_SINK=0
WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --with-smtp-sink) WITH_SMTP_SINK=1 ;;
        --with-browser) WITH_BROWSER=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        *)
            echo "$PROG: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

QUIET=0
[[ "${SERVICES_QUIET:-0}" == 1 ]] && QUIET=1

say() { ((QUIET)) || printf '%s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

IS_ROOT=0
[[ "$(id -u)" == 0 ]] && IS_ROOT=1

# Serialise concurrent runs (e.g. several CI jobs on one machine). The lock
# is fd 9; it is closed (9>&-) for every command that may leave a daemon
# behind (servers, apt postinst scripts, epmd spawned by rabbitmqctl), or the
# daemon would hold the lock forever.
if have flock; then
    LOCK_FILE="${TMPDIR:-/tmp}/mailq-services.$(id -u).lock"
    if exec 9>>"$LOCK_FILE"; then
        flock -w 300 9 || die "could not acquire $LOCK_FILE within 300 s"
    fi
fi

# ---------------------------------------------------------------- helpers ---

# tcp_open HOST PORT: true if something accepts TCP connections there.
tcp_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds or time is up.
wait_for() {
    local limit=$1 start=$SECONDS
    shift
    until "$@"; do
        ((SECONDS - start < limit)) || return 1
        sleep 0.2
    done
}

APT_LOG=""
APT_UPDATED=0
can_apt() { ((IS_ROOT)) && have apt-get; }

# apt_install PKG...: noninteractive install; "apt-get update" at most once.
apt_install() {
    can_apt || return 1
    [[ -n "$APT_LOG" ]] || APT_LOG=$(mktemp "${TMPDIR:-/tmp}/mailq-services-apt.XXXXXX")
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=120)
    if ((!APT_UPDATED)); then
        say "apt: updating package lists"
        if ! "${apt[@]}" update >>"$APT_LOG" 2>&1; then
            tail -n 30 "$APT_LOG" >&2
            die "apt-get update failed (full log: $APT_LOG)"
        fi
        APT_UPDATED=1
    fi
    say "apt: installing $*"
    if ! "${apt[@]}" install -y "$@" >>"$APT_LOG" 2>&1; then
        tail -n 30 "$APT_LOG" >&2
        die "apt-get install $* failed (full log: $APT_LOG)"
    fi
}

# ------------------------------------------------------------- PostgreSQL ---

pg_up() {
    if have pg_isready; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

pg_version() { ls /etc/postgresql 2>/dev/null | head -1; }

pg_installed() {
    { have pg_ctlcluster && [[ -n "$(pg_version)" ]]; } || [[ -x /etc/init.d/postgresql ]]
}

pg_start() {
    local ver
    ver=$(pg_version)
    if [[ -n "$ver" ]] && have pg_ctlcluster &&
        pg_ctlcluster --skip-systemctl-redirect "$ver" main start; then
        return 0
    fi
    if have service; then
        service postgresql start
    else
        return 1
    fi
}

# Run SQL as the postgres superuser (-At output, stop on error).
psql_super() {
    if ((IS_ROOT)) && id postgres >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@")
    else
        PGCONNECT_TIMEOUT=5 psql -X -q -At -w -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres "$@"
    fi
}

# Connect like the app does; true if the role can log in and has what it needs.
pg_app_ok() {
    local out
    out=$(PGCONNECT_TIMEOUT=5 psql -X -q -At -w \
        "postgresql://$DB_USER:$DB_PASSWORD@$PG_HOST:$PG_PORT/$DB_NAME" \
        -c "SELECT r.rolcreatedb AND d.datdba = r.oid FROM pg_roles r, pg_database d
            WHERE r.rolname = current_user AND d.datname = current_database()" 2>/dev/null) || return 1
    [[ "$out" == t ]]
}

# Ensure role mailq (LOGIN CREATEDB PASSWORD 'mailq') and database mailq owned by it.
# Prints what it changed (empty if nothing).
pg_provision() {
    have psql || die "psql not found (install postgresql-client)"
    local state role db changes=()
    # role: missing | ok | fix ; db: missing | ok | fix
    if ! state=$(psql_super -c "
        SELECT coalesce((SELECT CASE WHEN rolcanlogin AND rolcreatedb AND rolpassword IS NOT NULL
                                     THEN 'ok' ELSE 'fix' END
                         FROM pg_authid WHERE rolname = '$DB_USER'), 'missing')
            || ' ' ||
               coalesce((SELECT CASE WHEN r.rolname = '$DB_USER' THEN 'ok' ELSE 'fix' END
                         FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
                         WHERE d.datname = '$DB_NAME'), 'missing')" 2>&1); then
        # No superuser access (e.g. not root, no trust on TCP): fine if the app
        # can already connect with everything it needs.
        if pg_app_ok; then
            return 0
        fi
        die "cannot connect to PostgreSQL as superuser 'postgres' to create role/database '$DB_USER' ($state).
  Run this script as root, or create them yourself:
    CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD'; CREATE DATABASE $DB_NAME OWNER $DB_USER;"
    fi
    read -r role db <<<"$state"
    local sql=()
    case "$role" in
        missing) sql+=(-c "CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD'") changes+=("role created") ;;
        fix) sql+=(-c "ALTER ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD'") changes+=("role updated") ;;
    esac
    case "$db" in
        missing) sql+=(-c "CREATE DATABASE $DB_NAME OWNER $DB_USER") changes+=("database created") ;;
        fix) sql+=(-c "ALTER DATABASE $DB_NAME OWNER TO $DB_USER") changes+=("database owner fixed") ;;
    esac
    if ((${#sql[@]})); then
        psql_super "${sql[@]}" >/dev/null || die "failed to create PostgreSQL role/database '$DB_USER'"
    fi
    if ! pg_app_ok; then
        # The password might differ from 'mailq' (only visible under password auth).
        psql_super -c "ALTER ROLE $DB_USER PASSWORD '$DB_PASSWORD'" >/dev/null || true
        changes+=("password reset")
        pg_app_ok || die "cannot connect as postgres://$DB_USER:***@$PG_HOST:$PG_PORT/$DB_NAME (check pg_hba.conf)"
    fi
    ((${#changes[@]})) && (IFS=,; echo "${changes[*]}" | sed 's/,/, /g')
    return 0
}

# --------------------------------------------------------------- RabbitMQ ---

rmq_up() { tcp_open "$RMQ_HOST" "$RMQ_PORT"; }
rmq_installed() { have rabbitmq-server; }
rmq_start() {
    (cd / && rabbitmq-server -detached)
}

rmq_log_hint() {
    local f
    for f in /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log; do
        [[ -s "$f" ]] && { echo "--- $f:"; tail -n 15 "$f"; }
    done >&2
    ls -t /var/log/rabbitmq/*.log 2>/dev/null | head -1 | while read -r f; do
        echo "--- $f:"
        tail -n 20 "$f"
    done >&2
}

rmq_api() { # rmq_api METHOD PATH [curl args...]
    local method=$1 path=$2
    shift 2
    curl -fsS -o /dev/null -m 5 -u guest:guest -X "$method" "$@" "http://$RMQ_HOST:$RMQ_MGMT_PORT/api$path"
}

# Ensure vhost mailq_test with full permissions for guest, and the management
# plugin. Prints what it changed (empty if nothing).
rmq_provision() {
    have curl || { warn "curl not found; cannot check the RabbitMQ management API"; }
    # Fast path: the management API answering for the vhost and guest's
    # permissions on it means plugin enabled, vhost present, permissions set.
    if have curl && curl -fsS -o /dev/null -o /dev/null -m 3 --fail-early -u guest:guest \
        "http://$RMQ_HOST:$RMQ_MGMT_PORT/api/vhosts/$RMQ_VHOST" \
        "http://$RMQ_HOST:$RMQ_MGMT_PORT/api/permissions/$RMQ_VHOST/guest" 2>/dev/null; then
        return 0
    fi
    local changes=()
    if ((IS_ROOT)) && have rabbitmqctl; then
        local out
        out=$(cd / && rabbitmqctl -q list_vhosts --no-table-headers name 2>&1) || die "rabbitmqctl list_vhosts failed: $out"
        if ! grep -qx "$RMQ_VHOST" <<<"$out"; then
            (cd / && rabbitmqctl -q add_vhost "$RMQ_VHOST") >/dev/null || die "rabbitmqctl add_vhost $RMQ_VHOST failed"
            changes+=("vhost $RMQ_VHOST created")
        fi
        out=$(cd / && rabbitmqctl -q list_permissions -p "$RMQ_VHOST" --no-table-headers 2>&1) || die "rabbitmqctl list_permissions failed: $out"
        if ! grep -qxE $'guest\t\\.\\*\t\\.\\*\t\\.\\*' <<<"$out"; then
            (cd / && rabbitmqctl -q set_permissions -p "$RMQ_VHOST" guest '.*' '.*' '.*') >/dev/null ||
                die "rabbitmqctl set_permissions -p $RMQ_VHOST guest failed"
            changes+=("guest permissions set")
        fi
        if ! (cd / && rabbitmq-plugins -q list -e -m 2>/dev/null) | grep -qx rabbitmq_management; then
            if out=$(cd / && rabbitmq-plugins -q enable rabbitmq_management 2>&1); then
                changes+=("management plugin enabled")
            else
                warn "could not enable rabbitmq_management (continuing): $out"
            fi
        fi
    elif have curl && rmq_api GET /overview 2>/dev/null; then
        # Not root, but the management API is there: use it.
        rmq_api PUT "/vhosts/$RMQ_VHOST" || die "could not create vhost $RMQ_VHOST via the management API"
        rmq_api PUT "/permissions/$RMQ_VHOST/guest" -H 'content-type: application/json' \
            -d '{"configure":".*","write":".*","read":".*"}' ||
            die "could not set permissions for guest on $RMQ_VHOST via the management API"
        changes+=("vhost/permissions ensured via API")
    else
        warn "cannot check RabbitMQ vhost '$RMQ_VHOST' (not root and management API unavailable); as root run:
  rabbitmqctl add_vhost $RMQ_VHOST; rabbitmqctl set_permissions -p $RMQ_VHOST guest '.*' '.*' '.*'"
        changes+=("vhost not verified")
    fi
    ((${#changes[@]})) && (IFS=,; echo "${changes[*]}" | sed 's/,/, /g')
    return 0
}

# ------------------------------------------------------------------ Redis ---

redis_up() {
    if have redis-cli; then
        [[ "$(timeout 2 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
    else
        tcp_open "$REDIS_HOST" "$REDIS_PORT"
    fi
}
redis_installed() { have redis-server; }
redis_start() {
    local dir=/var/lib/redis logdir=/var/log/redis
    mkdir -p "$dir" "$logdir" 2>/dev/null || true
    if [[ ! -w "$dir" || ! -w "$logdir" ]]; then
        # Not root and the system dirs are not ours: keep it under TMPDIR.
        dir="${TMPDIR:-/tmp}/mailq-redis-$(id -u)"
        logdir=$dir
        mkdir -p "$dir"
    fi
    (cd / && redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$dir" --logfile "$logdir/ci.log") >/dev/null
}

# ------------------------------------------------------------------- main ---

SERVICES=(postgres rabbitmq redis)
declare -A PKG=([postgres]=postgresql [rabbitmq]=rabbitmq-server [redis]=redis-server)
declare -A LABEL=([postgres]="PostgreSQL on $PG_HOST:$PG_PORT" [rabbitmq]="RabbitMQ on $RMQ_HOST:$RMQ_PORT" [redis]="Redis on $REDIS_HOST:$REDIS_PORT")
declare -A TIMEOUT=([postgres]=$PG_START_TIMEOUT [rabbitmq]=$RMQ_START_TIMEOUT [redis]=$REDIS_START_TIMEOUT)
declare -A STATUS=()

probe() { case $1 in postgres) pg_up ;; rabbitmq) rmq_up ;; redis) redis_up ;; esac }
installed() { case $1 in postgres) pg_installed ;; rabbitmq) rmq_installed ;; redis) redis_installed ;; esac }
start() { case $1 in postgres) pg_start ;; rabbitmq) rmq_start ;; redis) redis_start ;; esac }

# 1. Probe everything; collect what is missing entirely.
missing=()
for s in "${SERVICES[@]}"; do
    if probe "$s"; then
        STATUS[$s]=up
    elif installed "$s"; then
        STATUS[$s]=stopped
    else
        STATUS[$s]=missing
        missing+=("$s")
    fi
done

# 2. Install missing services in one apt-get run (root + apt only).
if ((${#missing[@]})); then
    if can_apt; then
        pkgs=()
        for s in "${missing[@]}"; do pkgs+=("${PKG[$s]}"); done
        apt_install "${pkgs[@]}" 9>&-
        for s in "${missing[@]}"; do
            installed "$s" || die "${PKG[$s]} installed but ${LABEL[$s]%% on *} still not found"
            # The package's postinst may already have started it.
            if probe "$s"; then STATUS[$s]=installed; else STATUS[$s]=installed-stopped; fi
        done
    else
        msg="not running and not installed:"
        for s in "${missing[@]}"; do msg+=$'\n'"  - ${LABEL[$s]}  (install: sudo apt-get install ${PKG[$s]})"; done
        msg+=$'\n'"Install them (or run this script as root on Debian/Ubuntu to have it install them), then re-run."
        die "$msg"
    fi
fi

# 3. Start what is stopped. RabbitMQ first: it is slow to boot and
#    -detached returns at once, so it boots while we deal with the others.
order=(rabbitmq postgres redis)
declare -A STARTED=()
for s in "${order[@]}"; do
    case "${STATUS[$s]}" in
        stopped | installed-stopped)
            if ! start "$s" 9>&-; then
                [[ $s == rabbitmq ]] && rmq_log_hint
                hint=""
                ((IS_ROOT)) || hint=" (not root: start it yourself or re-run as root)"
                die "failed to start ${LABEL[$s]}$hint"
            fi
            STARTED[$s]=$SECONDS
            ;;
    esac
done
for s in "${order[@]}"; do
    [[ -n "${STARTED[$s]:-}" ]] || continue
    if ! wait_for "${TIMEOUT[$s]}" probe "$s"; then
        [[ $s == rabbitmq ]] && rmq_log_hint
        die "${LABEL[$s]} did not come up within ${TIMEOUT[$s]} s after starting it"
    fi
    if [[ $s == rabbitmq ]] && have rabbitmqctl && ((IS_ROOT)); then
        # The AMQP port opens late in boot, but make sure boot has finished.
        (cd / && timeout 60 rabbitmqctl -q await_startup --timeout 55) >/dev/null 2>&1 9>&- ||
            warn "rabbitmqctl await_startup did not confirm startup (port is open; continuing)"
    fi
    if [[ ${STATUS[$s]} == installed-stopped ]]; then STATUS[$s]="installed, started"; else STATUS[$s]=started; fi
done

# 4. Provision and report.
note=$(pg_provision)
say "postgres: ${STATUS[postgres]}${note:+ ($note)}"
note=$(rmq_provision 9>&-)
say "rabbitmq: ${STATUS[rabbitmq]}${note:+ ($note)}"
say "redis: ${STATUS[redis]}"

# 5. Optional: Postfix's smtp-sink (tests use it as a throwaway SMTP server).
if ((WITH_SMTP_SINK)); then
    if [[ -x /usr/sbin/smtp-sink ]]; then
        say "smtp-sink: present"
    elif can_apt; then
        if have debconf-set-selections; then
            debconf-set-selections <<'EOF'
postfix postfix/main_mailer_type select No configuration
EOF
        fi
        apt_install postfix 9>&-
        [[ -x /usr/sbin/smtp-sink ]] || die "postfix installed but /usr/sbin/smtp-sink is missing"
        say "smtp-sink: installed"
    else
        die "smtp-sink (/usr/sbin/smtp-sink) is not installed; install it with:
  echo 'postfix postfix/main_mailer_type select No configuration' | sudo debconf-set-selections
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"
    fi
fi

# 6. Optional: Chromium for the browser tests.
if ((WITH_BROWSER)); then
    if [[ -x /usr/bin/chromium ]]; then
        say "chromium: present"
    elif can_apt; then
        apt_install chromium 9>&-
        [[ -x /usr/bin/chromium ]] || die "chromium installed but /usr/bin/chromium is missing"
        say "chromium: installed"
    else
        die "chromium (/usr/bin/chromium) is not installed; install it with:
  sudo apt-get install -y chromium"
    fi
fi
[[ -z "$APT_LOG" ]] || rm -f "$APT_LOG"  # kept only when apt failed
exit 0
