"""dovecot_conf.py: `doveconf -n` -> the passdb chain -> warnings about the --audit-chain passdb.

The parser is fed the output of the real `doveconf` (Dovecot 2.3) for small configs written
here; the whole check through the real Dovecot is in test_end_to_end_audit.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dovecot_appauth.cli.checks import check_dovecot_chain
from dovecot_appauth.cli.dovecot_conf import DoveconfError, audit_chain_problems, parse_passdbs, read_doveconf

pytestmark = pytest.mark.skipif(shutil.which("doveconf") is None and not os.access("/usr/bin/doveconf", os.X_OK),
                                reason="doveconf missing (apt-get install dovecot-core)")

PROGRAM = "/usr/local/bin/dovecot-appauth-checkpassword"
PAM_OK = "driver = pam\nresult_success = continue-ok\nresult_failure = return-fail\noverride_fields = appauth_ok=yes"
CHAIN_OK = (f"driver = checkpassword\nargs = {PROGRAM} --audit-chain\nskip = unauthenticated\n"
            "result_failure = return-fail")


def passdb(settings: str) -> str:
    return "passdb {\n" + "".join(f"  {line}\n" for line in settings.splitlines()) + "}\n"


def doveconf_passdbs(tmp_path: Path, *blocks: str, extra: str = "") -> str:
    """`doveconf -n` of a minimal config holding these passdb blocks."""
    conf = tmp_path / "dovecot.conf"
    conf.write_text(f"protocols = imap\nssl = no\n{extra}" + "".join(passdb(b) for b in blocks)
                    + "userdb {\n  driver = prefetch\n}\n")
    return read_doveconf(str(conf))


def messages(text: str) -> list[str]:
    return [f"{where}: {message}" for where, message in audit_chain_problems(parse_passdbs(text))]


def test_parse_passdbs_of_real_doveconf_output(tmp_path):
    text = doveconf_passdbs(tmp_path, PAM_OK.replace("appauth_ok=yes", "appauth_ok=yes other=1"), CHAIN_OK,
                            extra="protocol imap {\n  passdb {\n    driver = static\n    args = nopassword\n  }\n}\n")
    passdbs = parse_passdbs(text)
    assert [p.driver for p in passdbs] == ["pam", "checkpassword", "static"]
    first, chain = passdbs[0], passdbs[1]
    assert first.fields() == {"appauth_ok=yes", "other=1"}
    assert first.settings["result_success"] == "continue-ok"
    assert chain.is_audit_chain() and not first.is_audit_chain()
    assert chain.settings["skip"] == "unauthenticated" and chain.number == 2


def test_the_example_chain_gives_no_warning(tmp_path):
    assert messages(doveconf_passdbs(tmp_path, PAM_OK, CHAIN_OK)) == []
    # the marker may also come as a default field
    assert messages(doveconf_passdbs(tmp_path, PAM_OK.replace("override_fields", "default_fields"), CHAIN_OK)) == []
    # a checkpassword passdb without --audit-chain checks passwords itself: nothing to say
    assert messages(doveconf_passdbs(tmp_path, f"driver = checkpassword\nargs = {PROGRAM}")) == []


def test_audit_chain_first(tmp_path):
    found = messages(doveconf_passdbs(tmp_path, CHAIN_OK, PAM_OK))
    assert len(found) == 1
    assert found[0].startswith("Dovecot passdb #1 (checkpassword --audit-chain): is the first passdb: ")


def test_audit_chain_without_skip_marker_or_continue(tmp_path):
    found = messages(doveconf_passdbs(tmp_path, PAM_OK, CHAIN_OK.replace("skip = unauthenticated\n", "")))
    assert len(found) == 1 and "has no `skip = unauthenticated`" in found[0], found
    found = messages(doveconf_passdbs(tmp_path, PAM_OK.replace("override_fields = appauth_ok=yes", ""), CHAIN_OK))
    assert len(found) == 1 and "no passdb before it sets appauth_ok=yes" in found[0], found
    found = messages(doveconf_passdbs(tmp_path, PAM_OK.replace("override_fields = appauth_ok=yes",
                                                               "override_fields = appauth_ok=no"), CHAIN_OK))
    assert len(found) == 1 and "no passdb before it sets appauth_ok=yes" in found[0], found
    found = messages(doveconf_passdbs(tmp_path, PAM_OK.replace("result_success = continue-ok\n", ""), CHAIN_OK))
    assert len(found) == 1 and "never audited" in found[0], found


def test_check_dovecot_chain_problems_are_warnings(tmp_path):
    conf = tmp_path / "dovecot.conf"
    conf.write_text("ssl = no\n" + passdb(CHAIN_OK))
    problems = check_dovecot_chain(str(conf))
    assert [p.level for p in problems] == ["warning"]
    assert str(problems[0]).startswith("warning: Dovecot passdb #1 (checkpassword --audit-chain): is the first")


def test_doveconf_failure_is_one_warning(tmp_path):
    missing = tmp_path / "missing.conf"
    with pytest.raises(DoveconfError, match="failed: "):
        read_doveconf(str(missing))
    problems = check_dovecot_chain(str(missing))
    assert len(problems) == 1 and problems[0].level == "warning"
    assert problems[0].message.startswith("not checked: ") and str(missing) in problems[0].message
