#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 test machine (the README's test command). It
# installs MariaDB, Dovecot, Chromium, valgrind, slapd and more, and starts test servers:
# run it on a test machine, not on a mail server.
#   scripts/test.sh [pytest args...]
# 0. runs as root: run by another user it re-runs itself through sudo (scripts/as-root.sh;
#    without sudo it stops and says so; APPAUTH_AS_USER=1 runs it as that user instead,
#    without the installs and the network namespace),
# 1. installs the Debian packages the end-to-end tests need (only when some are missing),
# 2. makes the virtualenv ${APPAUTH_VENV:-/opt/dovecot-appauth-test/venv} from /usr/bin/python3
#    (world-readable: Dovecot runs our program as user `dovecot`), installs '.[test]' into it
#    (a test-only path, apart from the README's production install /opt/dovecot-appauth/venv),
# 3. runs `ruff check src tests` and pytest (arguments passed through), as root inside a
#    network namespace that has only `lo` (`unshare -n`): the tests may contact loopback
#    only, so a config that falls back to the system resolver fails a test instead of
#    sending queries out (tests/e2e/test_fixtures_smoke.py checks that it is in force).
# Exits non-zero when anything fails, including "no tests collected".
# Environment: APPAUTH_VENV (venv path), APPAUTH_SKIP_APT=1 (never call apt-get),
# APPAUTH_DRY_RUN=1 (print whether it would run as root or through sudo, and stop),
# APPAUTH_AS_USER=1 (run as the calling user: no sudo, no installs, no network namespace),
# CI=true (end-to-end tests fail instead of skipping when Dovecot/MariaDB are missing),
# APPAUTH_TEST_NETNS=0 (run pytest without the namespace; not as root it always is).
set -euo pipefail
umask 022

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/as-root.sh
. "$ROOT/scripts/as-root.sh"
if [ "${APPAUTH_AS_USER:-0}" = 1 ]; then
    if [ "${APPAUTH_DRY_RUN:-0}" = 1 ]; then echo "as-root: APPAUTH_AS_USER=1: running as uid $(id -u)"; exit 0; fi
else
    AS_ROOT_WHY="it installs Debian packages and runs pytest in a loopback-only network namespace; APPAUTH_AS_USER=1 runs it as this user without either"
    as_root_exec bash "$ROOT/scripts/test.sh" "$@"
fi
if [ "${APPAUTH_DRY_RUN:-0}" = 1 ]; then exit 0; fi
VENV="${APPAUTH_VENV:-/opt/dovecot-appauth-test/venv}"
# chromium: the HTML report is screenshotted headless (tests/e2e/test_report.py);
# dovecot-auth-lua: the Lua passdb example against `serve` (tests/e2e/test_end_to_end_serve.py)
# strace: slows fsync down to test the enrichment cache on a busy disk (tests/e2e/test_enrich.py)
# valgrind: instruction counts of a login (benchmarks/instructions.py, tests/e2e/test_benchmark_smoke.py)
# slapd, ldap-utils: a real OpenLDAP server for the account gate (tests/support/ldap.py);
# libldap2-dev, libsasl2-dev: python-ldap builds against them (no binary wheel on PyPI)
# systemd: `systemd-analyze verify` of examples/systemd/ (tests/unit/test_systemd_unit.py)
# lua5.4: runs examples/dovecot/appauth.lua against a stand-in of Dovecot's Lua API (tests/e2e/test_lua_script.py)
# iproute2, util-linux: `ip link set lo up` inside `unshare -n` (step 3)
# sudo: tests/unit/test_scripts.py checks that a user who is not root is sent through sudo
DEB_PACKAGES=(dovecot-core dovecot-imapd dovecot-pop3d dovecot-auth-lua mariadb-server python3-venv python3-dev gcc
              chromium strace valgrind slapd ldap-utils libldap2-dev libsasl2-dev openssl
              iproute2 util-linux systemd lua5.4 sudo)

log() { printf '\n==> %s\n' "$*" >&2; }

# --- 1. Debian packages ---------------------------------------------------------------
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${DEB_PACKAGES[@]}"; do
        if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]; then
            missing+=("$pkg")
        fi
    done
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "${APPAUTH_SKIP_APT:-0}" = 1 ] || [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "WARNING: missing Debian packages: ${missing[*]} (not root or APPAUTH_SKIP_APT=1: not installing)"
    else
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Keep the packages' system services (dovecot on 143/110, mariadb on 3306) from being
        # started: the tests start their own servers on free ports.
        policy_rc=/usr/sbin/policy-rc.d
        made_policy=0
        if [ ! -e "$policy_rc" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
            chmod 755 "$policy_rc"
            made_policy=1
        fi
        cleanup_policy() { if [ "$made_policy" = 1 ]; then rm -f "$policy_rc"; fi; }
        trap cleanup_policy EXIT
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
        cleanup_policy
        trap - EXIT
    fi
fi

# --- 2. virtualenv ----------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV from /usr/bin/python3"
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
fi
chmod a+rX "$(dirname "$VENV")" "$VENV" 2>/dev/null || true
PY="$VENV/bin/python"

# Editable install when user dovecot can read this checkout (then it runs the code under
# test directly); otherwise (e.g. a checkout under /root) a regular install into the venv.
editable=(-e)
if [ "$(id -u)" -eq 0 ] && id dovecot >/dev/null 2>&1 \
        && ! runuser -u dovecot -- test -r "$ROOT/src/dovecot_appauth/__init__.py" 2>/dev/null; then
    log "user dovecot cannot read $ROOT: installing a copy (not editable)"
    editable=()
fi
log "pip install ${editable[*]} '.[test]' into $VENV"
# Offline first (quick on a prepared machine, works without a network), then from the index.
if ! "$PY" -m pip install -q --disable-pip-version-check --no-index --no-build-isolation \
        "${editable[@]}" ".[test]" >/dev/null 2>&1; then
    "$PY" -m pip install -q --disable-pip-version-check "${editable[@]}" ".[test]"
fi
chmod -R a+rX "$VENV" 2>/dev/null || true

# --- 3. lint and tests ---------------------------------------------------------------
log "ruff check src tests"
"$VENV/bin/ruff" check src tests

# Every install that needs the package index is done: from here on, loopback only.
netns=0
if [ "${APPAUTH_TEST_NETNS:-1}" = 1 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        netns=1
    else
        log "WARNING: not root: pytest runs WITHOUT the loopback-only network namespace"
    fi
fi
if [ "$netns" = 1 ] && ! unshare --net -- /bin/true; then
    echo "scripts/test.sh: cannot create a network namespace (unshare --net): failing;" \
         "APPAUTH_TEST_NETNS=0 runs the tests without it" >&2
    exit 1
fi
set +e
if [ "$netns" = 1 ]; then
    log "pytest $* (network namespace: lo only)"
    # APPAUTH_TEST_NETNS=1 tells tests/e2e/test_fixtures_smoke.py to check that no route leads out
    APPAUTH_TEST_NETNS=1 unshare --net -- /bin/sh -c \
        'PATH="$PATH:/usr/sbin:/sbin"; ip link set lo up && exec "$@"' sh "$PY" -m pytest "$@"
else
    log "pytest $*"
    "$PY" -m pytest "$@"
fi
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
