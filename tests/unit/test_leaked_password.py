"""The leaked-password alert: the right password of a revoked or expired app password.

The installed program refuses it (as before) and now also records an audit event with
alert `leaked-password`, writes an alert line and runs `[alerts] notify_command` with the
user, the password id, when it was revoked or expired, the client IP and its place; the
report lists these under their own heading in every format.
"""

from __future__ import annotations

import json
import time

import pytest

from dovecot_appauth.cli import schema
from tests.support.hardening import GLOBAL_NETWORKS, dovecot_env, make_site, run_cli

CLIENT = "198.51.100.7"  # in the bundled test City database: a place to report


@pytest.fixture
def site(mmdb_paths):
    s = make_site(prefix="appauth-leak-")
    notify = s.dir / "notify.json"
    city, asn = mmdb_paths
    s.write(audit={"enabled": True, "record_events": True, "syslog_socket": "", "journal": "no",
                   "global_networks": GLOBAL_NETWORKS},
            audit__dns={"enabled": False}, audit__maxmind={"city": city, "asn": asn},
            alerts={"enabled": True, "notify_command": f"cat > {notify}"})
    s.notify = notify  # type: ignore[attr-defined]
    yield s
    s.remove()


def _wait_json(path, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} not written by the notify command")


def _events(site) -> list[tuple]:
    return site.rows("SELECT uid, pwid, src_ip, place, result, rule, reason, authenticated, alert "
                     "FROM audit_events ORDER BY id")


def test_revoked_password_right_password_is_a_leaked_password_alert(site):
    site.add_password("old", "alice@example.com", revoked=True)
    run = site.login("old", env=dovecot_env(ip=CLIENT))
    assert run.status == 1  # still refused
    lines = run.stderr.splitlines()
    assert any(f"user alice@example.com: refused revoked app password #{site.pwid('old')}" in line for line in lines)
    alert = [line for line in lines if "login alert leaked-password" in line]
    assert len(alert) == 1 and f"from {CLIENT}" in alert[0] and f"app password #{site.pwid('old')}" in alert[0]
    (event,) = _events(site)
    uid, pwid, ip, place, result, rule, reason, authenticated, kind = event
    assert (uid, pwid, ip, result, rule, authenticated, kind) == (
        "alice@example.com", site.pwid("old"), CLIENT, "refused", "leaked-password", 0, "leaked-password")
    assert place  # from the bundled City database
    assert reason.startswith(f"right password of revoked app password #{site.pwid('old')} (revoked 20")
    sent = _wait_json(site.notify)
    assert (sent["uid"], sent["pwid"], sent["src_ip"], sent["place"]) == ("alice@example.com", site.pwid("old"),
                                                                          CLIENT, place)
    assert sent["alerts"][0]["kind"] == "leaked-password" and sent["password_state"] == "revoked"
    assert sent["password_state_since"].endswith("UTC")
    # a wrong password for the same user is nothing of the kind
    site.notify.unlink()
    assert site.login("old", "wrong-" + site.pw("old"), env=dovecot_env(ip=CLIENT)).status == 1
    assert len(_events(site)) == 1 and not site.notify.exists()
    # the same password from the same client again (a phone still set up with it): another
    # event, but told once a day only; from another client: told again
    again = site.login("old", env=dovecot_env(ip=CLIENT))
    assert again.status == 1 and "leaked-password" not in again.stderr
    assert len(_events(site)) == 2
    time.sleep(0.3)
    assert not site.notify.exists()
    other = site.login("old", env=dovecot_env(ip="198.51.100.8"))
    assert "login alert leaked-password from 198.51.100.8" in other.stderr
    assert _wait_json(site.notify)["src_ip"] == "198.51.100.8"
    # the secret is in no output
    assert site.pw("old") not in run.stderr + json.dumps(sent)


def test_expired_password_right_password_is_a_leaked_password_alert(site):
    site.add_password("exp", "bob@example.com")
    engine = schema.make_engine(site.dsn)
    try:
        schema.set_policy(engine, site.pwid("exp"), expires=time.time() - 3600)
    finally:
        engine.dispose()
    assert site.login("exp", env=dovecot_env(ip=CLIENT)).status == 1
    (event,) = _events(site)
    _uid, _pwid, _ip, _place, result, rule, reason, authenticated, kind = event
    assert (result, rule, authenticated, kind) == ("refused", "leaked-password", 0, "leaked-password")
    assert reason.startswith(f"right password of expired app password #{site.pwid('exp')} (expired ")
    assert _wait_json(site.notify)["password_state"] == "expired"


def test_alerts_off_records_the_event_but_says_and_sends_nothing(site):
    site.write(audit={"enabled": True, "record_events": True, "syslog_socket": "", "journal": "no",
                      "global_networks": GLOBAL_NETWORKS}, audit__dns={"enabled": False})
    site.add_password("old", "carol@example.com", revoked=True)
    run = site.login("old", env=dovecot_env(ip=CLIENT))
    assert run.status == 1 and "leaked-password" not in run.stderr
    assert [e[-1] for e in _events(site)] == ["leaked-password"]
    time.sleep(0.3)
    assert not site.notify.exists()


def test_report_lists_leaked_passwords_under_their_own_heading(site):
    site.add_password("old", "alice@example.com", revoked=True)
    site.add_password("new", "alice@example.com")
    assert site.login("old", env=dovecot_env(ip=CLIENT)).status == 1
    assert site.login("new", env=dovecot_env(ip=CLIENT)).status == 0
    pwid = site.pwid("old")
    heading = "Leaked app passwords (right password of a revoked or expired one)"
    text = run_cli(site.path, "report", "--since", "1h", "--format", "text", "--unused-days", "0").stdout
    section = text.split(heading, 1)[1].split("\n\n", 1)[0]
    assert "alice@example.com" in section and f"  {pwid}  " in section and CLIENT in section
    assert "revoked app password" in section
    md = run_cli(site.path, "report", "--since", "1h", "--format", "markdown", "--unused-days", "0").stdout
    assert f"## {heading}" in md and f"| {pwid} | {CLIENT} |" in md
    page = run_cli(site.path, "report", "--since", "1h", "--format", "html", "--unused-days", "0").stdout
    assert f"<h2>{heading}</h2>" in page and '<div class="card bad"><b>1</b>leaked passwords</div>' in page
    data = json.loads(run_cli(site.path, "report", "--since", "1h", "--format", "json", "--unused-days", "0").stdout)
    assert data["totals"]["leaked_passwords"] == 1
    (leak,) = data["leaked_passwords"]
    assert (leak["user"], leak["pwid"], leak["ip"]) == ("alice@example.com", pwid, CLIENT) and leak["place"]
    # the accepted login is no leak
    assert data["totals"]["logins"] == 1
