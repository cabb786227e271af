"""events.py: the audit_events row of a login, history rows as sightings, the detached notify hook."""

from __future__ import annotations

import datetime
import io
import json
import shutil
import subprocess
import sys
import time

import pytest

from dovecot_appauth.audit.events import (
    COLUMNS,
    INSERT_EVENT,
    MAX_PAYLOAD,
    SELECT_HISTORY,
    encode_payload,
    event_row,
    notify,
    sightings,
)
from dovecot_appauth.audit.facts import GeoName, IpFacts, MaxMindFacts, WhoisFacts


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
        "src_ip": "198.51.100.7", "src_rdns": "h7.example.net", "country": "DE", "asn": 64500,
        "as_org": "Example Telecom", "place": "Berlin, Land Berlin, Germany", "latitude": 52.52, "longitude": 13.4,
        "accuracy_km": 20, "result": "unknown", "rule": None, "reason": "no deny list matched",
        "authenticated": True, "alert": "new-country",
    }
    assert row.params()[COLUMNS.index("authenticated")] == 1
    assert INSERT_EVENT.count("{p}") == len(COLUMNS)


def test_event_row_takes_the_as_of_a_trusted_source_before_rdaps():
    """The alerts compare a login's AS and country with the user's earlier ones: RDAP's
    origin AS and network country are the network holder's word, so they are used only when
    MaxMind (and the origin-AS service) have none, never in front of them."""
    row = event_row(timestamp="t", user="u", pwid=1, service="imap", ip="198.51.100.7", facts=_facts(),
                    result="unknown")
    assert (row.asn, row.country) == (64500, "DE")  # MaxMind's, though RDAP says AS64501 and NL
    rdap_only = IpFacts("198.51.100.7", whois=WhoisFacts(asn=64501, net_cc="NL"))
    row = event_row(timestamp="t", user="u", pwid=1, service="imap", ip="198.51.100.7", facts=rdap_only,
                    result="unknown")
    assert (row.asn, row.country) == (64501, "NL")


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
    go = tmp_path / "go"
    # the command cannot finish before `go` exists (or 20 s have passed, so that a failed
    # test leaves no process behind): notify returning first shows the login does not wait
    command = f"for i in $(seq 400); do [ -e {go} ] && break; sleep 0.05; done; cat > {out}"
    assert notify(command, {"user": "alice@example.com", "alert": ["new-country"]})
    assert not out.exists()
    go.touch()
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
    # a program that cannot start is one line, never an exception in the login
    err = io.StringIO()
    assert not notify(("/nonexistent/notify",), {"n": 2}, err)
    assert err.getvalue() == ("dovecot-appauth: alerts: notify_command: cannot start /nonexistent/notify: "
                              "No such file or directory\n")


def _wait_for_line(path, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (path.exists() and path.read_text().endswith("\n")):
        time.sleep(0.05)
    return path.read_text()


def test_notify_payload_over_the_limit_is_still_valid_json(tmp_path):
    """It was cut at 60,000 bytes, mid-string: the command got invalid JSON."""
    out = tmp_path / "big.json"
    payload = {"uid": "alice@example.com", "reason": "é" * 50_000, "asn": 64500, "authenticated": True,
               "alerts": [{"kind": "new-asn", "detail": "x" * 40_000}]}
    assert notify(f"cat > {out}", payload)
    text = _wait_for_line(out)
    assert len(text.encode()) <= MAX_PAYLOAD
    sent = json.loads(text)
    assert sent["truncated"] is True
    assert (sent["uid"], sent["asn"], sent["authenticated"]) == ("alice@example.com", 64500, True)
    assert sent["reason"].startswith("éé") and sent["alerts"][0]["kind"] == "new-asn"


@pytest.mark.parametrize("size", [10, 1000, 100_000])
def test_encode_payload_is_complete_json_within_the_limit(size):
    for payload in ({"text": "\u20ac" * size}, {"items": list(range(size))}, {f"k{i}": "v" for i in range(size)},
                    {"nested": [{"a": ["b" * size] * 3}] * 3}):
        data = encode_payload(payload)
        assert len(data) <= MAX_PAYLOAD and data.endswith(b"\n")
        decoded = json.loads(data)
        assert isinstance(decoded, dict)
        if len(json.dumps(payload, ensure_ascii=False).encode()) < MAX_PAYLOAD:
            assert decoded == payload  # small enough: sent unchanged


_SPAWN_SCRIPT = """
import os, sys, threading
from dovecot_appauth.audit.events import notify
started = threading.Event()
stop = threading.Event()
def enrichment():  # stands for the login's enrichment threads, alive while it sends an alert
    started.set()
    stop.wait(10)
thread = threading.Thread(target=enrichment, daemon=True)
thread.start()
started.wait(10)
print(os.getpid(), thread.native_id, flush=True)
ok = notify(("/bin/sh", "-c", "cat > " + sys.argv[1]), {"n": 1})
stop.set()
thread.join()
sys.exit(0 if ok else 1)
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_notify_never_forks_a_threaded_process(tmp_path):
    """A fork() copies one thread of a threaded process: a lock held by another thread
    stays held for ever in the child. The command must start by vfork/posix_spawn + exec."""
    out, trace = tmp_path / "notified.json", tmp_path / "strace.txt"
    run = subprocess.run(["strace", "-f", "-qq", "-e", "trace=clone,clone3,fork,vfork", "-o", str(trace),
                          sys.executable, "-c", _SPAWN_SCRIPT, str(out)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(_wait_for_line(out)) == {"n": 1}
    ours = set(run.stdout.split())  # the interpreter's pid and its thread's
    creations = []
    for line in trace.read_text().splitlines():
        pid, _, call = line.partition(" ")
        call = call.strip()
        if pid in ours and call.startswith(("clone", "fork", "vfork")) and "CLONE_THREAD" not in call:
            creations.append(call)
    assert creations, trace.read_text()  # the command was started from the interpreter
    for call in creations:
        assert call.startswith("vfork(") or "CLONE_VFORK" in call, call
