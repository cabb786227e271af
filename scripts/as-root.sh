# Root for the steps that need it, sourced by scripts/test.sh and examples/demo.sh (POSIX sh).
# The README shows both scripts without `sudo`: a fresh Debian 12 installed without a
# user account has no sudo at all (`sudo: command not found`), and a user with sudo should
# not have to know which steps need root. So: as root a step runs directly; otherwise it
# goes through sudo when sudo is installed; otherwise the script stops with one line
# saying what needs root. With APPAUTH_DRY_RUN=1 the scripts print that decision
# (`as-root: ...` on stdout) and exit before changing anything (tests/unit/test_scripts.py).
#
#   as_root_exec INTERPRETER SCRIPT ARGS...   as root: return; otherwise re-run the whole
#                                 script through sudo (exec; keeps the APPAUTH_*, CI and
#                                 DEMO_DIR variables, which sudo would drop)
#   as_root CMD ARGS...           run one command as root

AS_ROOT_KEEP_ENV="APPAUTH_VENV APPAUTH_SKIP_APT APPAUTH_TEST_NETNS APPAUTH_AS_USER APPAUTH_DRY_RUN CI DEMO_DIR"

# The sudo command line, with the kept variables passed through env(1): `sudo VAR=value`
# and --preserve-env need a sudoers SETENV grant, `sudo env VAR=value CMD` does not.
_as_root_sudo_argv() {
    _argv="sudo -- env"
    for _name in $AS_ROOT_KEEP_ENV; do
        eval "_set=\${$_name+x}"
        if [ -n "$_set" ]; then
            eval "_value=\$$_name"
            _argv="$_argv $_name=$(_as_root_quote "$_value")"
        fi
    done
    for _arg in "$@"; do
        _argv="$_argv $(_as_root_quote "$_arg")"
    done
    printf '%s\n' "$_argv"
}

_as_root_quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# AS_ROOT_WHY (set by the caller): what needs root, and the way out without it.
_as_root_no_sudo() {
    echo "$(basename "$0"): $1 needs root and sudo is not installed: run it as root${AS_ROOT_WHY:+ ($AS_ROOT_WHY)}" >&2
    return 1
}

as_root_exec() {
    if [ "$(id -u)" = 0 ]; then
        if [ "${APPAUTH_DRY_RUN:-0}" = 1 ]; then echo "as-root: running as root"; fi
        return 0
    fi
    if ! command -v sudo >/dev/null 2>&1; then
        _as_root_no_sudo "this script"
        exit 1
    fi
    _cmd=$(_as_root_sudo_argv "$@")
    if [ "${APPAUTH_DRY_RUN:-0}" = 1 ]; then
        echo "as-root: not root (uid $(id -u)): would re-run through sudo: $_cmd"
        exit 0
    fi
    echo "$(basename "$0"): not root: re-running through sudo" >&2
    eval "exec $_cmd"
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        if [ "${APPAUTH_DRY_RUN:-0}" = 1 ]; then echo "as-root: would run as root: $*"; return 0; fi
        "$@"
        return
    fi
    if ! command -v sudo >/dev/null 2>&1; then
        _as_root_no_sudo "'$*'"
        return 1
    fi
    if [ "${APPAUTH_DRY_RUN:-0}" = 1 ]; then echo "as-root: not root (uid $(id -u)): would run through sudo: sudo -- $*"; return 0; fi
    echo "$(basename "$0"): '$*' needs root: running it through sudo" >&2
    sudo -- "$@"
}
