#!/bin/sh
# End-to-end demo on the embedded default: SQLite, the bundled test GeoIP databases,
# the example deny lists, no network lookups. Creates ./demo/ (venv, config, database,
# audit log) and runs logins exactly as Dovecot would start the program.
#
#   ./examples/demo.sh
#
# Runs as whoever starts it. Root is needed only to install python3-venv when it is
# missing (a fresh Debian 12): as root directly, otherwise through sudo; without sudo it
# stops and says so (scripts/as-root.sh). APPAUTH_DRY_RUN=1 prints that decision and stops.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/as-root.sh"
DEMO=${DEMO_DIR:-$ROOT/demo}
VENV=${APPAUTH_VENV:-$DEMO/venv}
USER_NAME=demo@example.com

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    say "installing python3-venv"
    AS_ROOT_WHY="or install python3-venv first"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
elif [ "${APPAUTH_DRY_RUN:-0}" = 1 ]; then
    echo "as-root: python3-venv is installed: nothing needs root; running as uid $(id -u)"
fi
if [ "${APPAUTH_DRY_RUN:-0}" = 1 ]; then exit 0; fi

mkdir -p "$DEMO"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT"

rm -rf "$DEMO/db" "$DEMO/cache" "$DEMO/lists" "$DEMO/audit.log"
mkdir -p "$DEMO/db"
cp -r "$ROOT/conf/lists" "$DEMO/lists"
# Documentation addresses only: 203.0.113.0/24 plays a hosting network to block.
printf '203.0.113.0/24   demo: a hosting network we do not want logins from\n' >> "$DEMO/lists/ip_net.deny.lst"

cat > "$DEMO/config.toml" <<EOF
[database]
dsn = "sqlite:///$DEMO/db/db.sqlite"

[userdb]
home = "/var/vmail/%d/%n"
mail = "maildir:~/Maildir"

[audit]
# The demo uses documentation addresses (RFC 5737), which are not globally reachable
# and so would be exempt like a LAN; judge them as global here.
global_networks = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]
log_file = "$DEMO/audit.log"
syslog_socket = ""
journal = "no"

[audit.maxmind]
city = "$ROOT/tests/data/mmdb/AppAuth-Test-City.mmdb"
asn = "$ROOT/tests/data/mmdb/AppAuth-Test-ASN.mmdb"

[audit.dns]
enabled = false

[audit.cache]
path = "$DEMO/cache"

[audit.lists]
ip_networks = "lists/ip_net.deny.lst"
as_numbers = "lists/asn.deny.lst"
network_cc = "lists/net_cc.deny.lst"
geo_location_ids = "lists/maxmind/geo_loc.deny.lst"
EOF

APPAUTH="$VENV/bin/dovecot-appauth --config $DEMO/config.toml"

say "init-db"
$APPAUTH init-db

say "check-config"
$APPAUTH check-config

say "password create $USER_NAME"
PASSWORD=$($APPAUTH password create "$USER_NAME" --comment "demo phone" --json | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["password"])')
echo "created an app password for $USER_NAME (it would be shown once)"

say "login with the app password over IMAP from 198.51.100.7"
echo "$PASSWORD" | $APPAUTH login-test "$USER_NAME" --service imap --ip 198.51.100.7

say "a wrong password"
echo "not-the-password" | $APPAUTH login-test "$USER_NAME" --service imap --ip 198.51.100.7 || true

say "the right password from a denied network (203.0.113.9)"
echo "$PASSWORD" | $APPAUTH login-test "$USER_NAME" --service smtp --ip 203.0.113.9 || true

say "password list: last use per password"
$APPAUTH password list "$USER_NAME"

say "explain 203.0.113.9: what the audit sees and why it denies"
$APPAUTH explain 203.0.113.9 --user "$USER_NAME" --service smtp

say "the audit log ($DEMO/audit.log)"
cat "$DEMO/audit.log"

say "demo finished: everything is in $DEMO"
