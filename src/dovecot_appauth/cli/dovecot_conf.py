"""`check-config`: read Dovecot's own configuration (`doveconf -n`) and judge the passdb chain.

Only what our program cannot see from its side belongs here. `--audit-chain` checks no
password: it relies on the passdbs before it. The program itself refuses a login without
the marker `appauth_ok=yes` (login.py, AUDIT_CHAIN_MARKER); this check says beforehand, from
the configuration, why logins would be refused or never audited. Admin code only (never
imported by a login).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

DOVECONF_TIMEOUT = 10.0  # seconds; doveconf reads local files only, but every call has a deadline


class DoveconfError(Exception):
    """`doveconf -n` could not be run or failed."""


@dataclass
class Passdb:
    """One `passdb { ... }` block of `doveconf -n`, in the order Dovecot tries them."""

    number: int  # 1-based position in the chain
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def driver(self) -> str:
        return self.settings.get("driver", "")

    @property
    def args(self) -> str:
        return self.settings.get("args", "")

    def fields(self) -> set[str]:
        """The `key=value` items of override_fields and default_fields (space-separated)."""
        items: set[str] = set()
        for key in ("override_fields", "default_fields"):
            items.update(self.settings.get(key, "").split())
        return items

    def is_audit_chain(self) -> bool:
        return self.driver == "checkpassword" and "--audit-chain" in self.args.split()


def find_doveconf() -> str | None:
    for candidate in (shutil.which("doveconf"), "/usr/bin/doveconf", "/usr/sbin/doveconf"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def read_doveconf(dovecot_config: str | None = None, *, doveconf: str | None = None) -> str:
    """The text of `doveconf -n` (of `-c dovecot_config` when given)."""
    program = doveconf or find_doveconf()
    if program is None:
        raise DoveconfError("doveconf not found (is Dovecot installed here?)")
    argv = [program, "-n"] + (["-c", dovecot_config] if dovecot_config else [])
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=DOVECONF_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise DoveconfError(f"{' '.join(argv)} did not answer within {DOVECONF_TIMEOUT:g} s") from None
    except OSError as e:
        raise DoveconfError(f"cannot run {program}: {e.strerror}") from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise DoveconfError(f"{' '.join(argv)} failed: {first[:300]}")
    return done.stdout


def parse_passdbs(text: str) -> list[Passdb]:
    """Every `passdb` block of `doveconf -n` output, nested ones (inside `protocol`) included."""
    passdbs: list[Passdb] = []
    stack: list[Passdb | None] = []  # one entry per open section; a Passdb for passdb sections
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("{"):
            name = line[:-1].split()
            if name and name[0] == "passdb":
                passdbs.append(Passdb(number=len(passdbs) + 1))
                stack.append(passdbs[-1])
            else:
                stack.append(None)
        elif line == "}":
            if stack:
                stack.pop()
        elif "=" in line and stack and stack[-1] is not None:
            key, _, value = line.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]  # doveconf quotes values with leading or trailing spaces
            stack[-1].settings[key.strip()] = value
    return passdbs


def audit_chain_problems(passdbs: list[Passdb]) -> list[tuple[str, str]]:
    """(where, message) for each passdb running us with --audit-chain that is set up so
    that its logins would be refused or never audited."""
    from ..login import AUDIT_CHAIN_MARKER

    marker = "=".join(AUDIT_CHAIN_MARKER)
    problems = []
    for passdb in passdbs:
        if not passdb.is_audit_chain():
            continue
        where = f"Dovecot passdb #{passdb.number} (checkpassword --audit-chain)"
        earlier = passdbs[: passdb.number - 1]
        if not earlier:
            problems.append((where, "is the first passdb: --audit-chain checks no password, so it must come "
                                    "after the passdb that checks it (see examples/dovecot/auth-audit-chain.conf.ext); "
                                    f"without {marker} from that passdb it refuses every login"))
            continue
        if passdb.settings.get("skip") != "unauthenticated":
            problems.append((where, "has no `skip = unauthenticated`: a login whose password the passdbs before "
                                    "it refused reaches it (it then refuses it only for want of the marker "
                                    f"{marker}); add `skip = unauthenticated`"))
        if not any(marker in p.fields() for p in earlier):
            problems.append((where, f"no passdb before it sets {marker}: the program refuses every login; give the "
                                    f"passdb that checks the password `override_fields = {marker}` (unless that "
                                    "passdb returns the field itself)"))
        if not any(p.settings.get("result_success") == "continue-ok" for p in earlier):
            problems.append((where, "no passdb before it has `result_success = continue-ok`: a successful login "
                                    "ends there and is never audited"))
    return problems
