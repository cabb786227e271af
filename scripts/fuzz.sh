#!/usr/bin/env bash
# The long fuzzing run of issue 6 (docs/SECURITY.md, "Fuzzing"): tests/unit/test_fuzz.py with the
# hypothesis profile "long" (more than 100,000 generated cases in all; about 10-20 minutes on
# 2 cores), then the number of passing cases hypothesis reports. CI runs the same file with
# the short profile "ci" as part of the normal suite.
#   scripts/fuzz.sh [pytest args...]        e.g. scripts/fuzz.sh -k list_parser
# Environment: APPAUTH_VENV (default /opt/dovecot-appauth-test/venv, as scripts/test.sh),
# HYPOTHESIS_PROFILE (default long). Network: loopback only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${APPAUTH_VENV:-/opt/dovecot-appauth-test/venv}"
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-long}"
log="$(mktemp -t appauth-fuzz.XXXXXX)"
trap 'rm -f "$log"' EXIT
set +e
"$VENV/bin/pytest" -p no:cacheprovider -q tests/unit/test_fuzz.py --hypothesis-show-statistics "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
total=$(grep -oE '[0-9]+ passing' "$log" | awk '{s += $1} END {print s + 0}')
echo "fuzz.sh: profile $HYPOTHESIS_PROFILE, $total passing generated cases (pytest exit $rc)"
if [ "$rc" -eq 0 ] && [ "$HYPOTHESIS_PROFILE" = long ] && [ "$#" -eq 0 ] && [ "$total" -lt 100000 ]; then
    echo "fuzz.sh: fewer than 100,000 cases ran" >&2
    exit 1
fi
exit "$rc"
