"""events.py: the audit_events row of a login, history rows as sightings, the detached notify hook."""

from __future__ import annotations

import datetime
import json
import time

from dovecot_appauth.events import COLUMNS, INSERT_EVENT, SELECT_HISTORY, event_row, notify, sightings
from dovecot_appauth.facts import GeoName, IpFacts, MaxMindFacts, WhoisFacts


def _facts() -> IpFacts:
    mm = MaxMindFacts(city=GeoName(2950159, "Berlin"), subdivisions=(GeoName(2950157, "Land Berlin", "BE"),),
                      country=GeoName(2921044, "Germany", "DE"), latitude=52.52, longitude=13.4,
                      accuracy_radius_km=20, asn=64500, as_org="Example Telecom")
    return IpFacts("198.51.100.7", rdns="h7.example.net", maxmind=mm, whois=WhoisFacts(asn=64501, net_cc="NL"))


def test_event_row_from_facts():
    row = event_row(timestamp="2026-03-01 08:10:00.000", user="alice@example.com", pwid=7, service="imap",
                    ip="198.51.100.7", facts=_facts(), result="unknown", rule=None, reason="no deny list matched",
                    alert="new-country")
    assert row.to_json() == {
        "timestamp": "2026-03-01 08:10:00.000", "uid": "alice@example.com", "pwid": 7, "service": "imap",
        "src_ip": "198.51.100.7", "src_rdns": "h7.example.net", "country": "DE", "asn": 64501,
        "as_org": "Example Telecom", "place": "Berlin, Land Berlin, Germany", "latitude": 52.52, "longitude": 13.4,
        "accuracy_km": 20, "result": "unknown", "rule": None, "reason": "no deny list matched",
        "authenticated": True, "alert": "new-country",
    }
    assert row.params()[COLUMNS.index("authenticated")] == 1
    assert INSERT_EVENT.count("{p}") == len(COLUMNS)


def test_event_row_without_facts_and_long_values():
    row = event_row(timestamp="t", user="u" * 400, pwid=None, service="imap", ip=None, facts=None,
                    place="Office", result="refused", rule="policy", reason="expired", authenticated=False)
    assert len(row.uid) == 250 and row.place == "Office" and row.country is None and row.asn is None
    assert row.params()[COLUMNS.index("authenticated")] == 0


def test_sightings_from_both_drivers():
    rows = [("2026-03-01 08:10:00.250", "DE", 64500, 52.52, 13.4, 20),
            (datetime.datetime(2026, 3, 1, 9, 0, 0), None, None, None, None, None),
            ("garbage", "DE", 1, 0.0, 0.0, 1)]
    got = sightings(rows)
    assert len(got) == 2
    assert got[0].time == 1772352600.25 and got[0].country == "DE" and got[0].radius_km == 20.0
    assert got[1].time == 1772355600.0 and not got[1].located
    assert "{collate}" in SELECT_HISTORY


def test_notify_is_detached_and_gets_json(tmp_path):
    out = tmp_path / "notified.json"
    start = time.monotonic()
    assert notify(f"sleep 0.5; cat > {out}", {"user": "alice@example.com", "alert": ["new-country"]})
    assert time.monotonic() - start < 0.4  # the login does not wait for the command
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (out.exists() and out.read_text().endswith("\n")):
        time.sleep(0.05)
    assert json.loads(out.read_text()) == {"user": "alice@example.com", "alert": ["new-country"]}


def test_notify_argv_form_and_missing_program(tmp_path):
    out = tmp_path / "argv.json"
    assert notify(("/bin/sh", "-c", f"cat > {out}"), {"n": 1})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not out.exists():
        time.sleep(0.05)
    time.sleep(0.1)
    assert json.loads(out.read_text()) == {"n": 1}
    assert notify(("/nonexistent/notify",), {"n": 2})  # fails in the detached child, never in the login
