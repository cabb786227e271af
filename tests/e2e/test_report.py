"""`dovecot-appauth report`: exact numbers on a seeded database, every format, mail, and the
HTML rendered by headless Chromium."""

from __future__ import annotations

import argparse
import calendar
import email
import email.policy
import io
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from dovecot_appauth import report
from dovecot_appauth.cli import main as cli
from dovecot_appauth.cli import schema

NOW = float(calendar.timegm((2026, 3, 1, 12, 0, 0)))
SINCE = NOW - 86400
KNOWN_GOOD = """\
# upstream audit_mail.py's file
KNOWN_GOOD_ASNS:
  - AS64500    # Example Telecom
KNOWN_DNS_SUFF:
  - example.org
AS_COMMENTS:
  - AS64502: Commercial VPN
  - AS64500: home ISP
"""

# (time, uid, pwid, service, ip, rdns, country, asn, as_org, place, lat, lon, result, rule, reason, auth, alert)
BERLIN = ("DE", 64500, "Example Telecom", "Berlin, Land Berlin, Germany", 52.52, 13.40)
NEW_YORK = ("US", 64501, "Example Hosting", "New York, New York, United States", 40.71, -74.01)
VPN = ("NL", 64502, "Example VPN", "Amsterdam, North Holland, The Netherlands", 52.37, 4.89)
DENY_VPN = ("deny", "as_numbers", "as_numbers: lists/asn.deny.lst:3 matched AS64502", 0, None)
EVENTS = [
    ("2026-02-20 10:00:00.000", "alice@example.com", 1, "imap", "198.51.100.7", "h7.pool.example.net", *BERLIN,
     "allow", None, "", 1, None),  # before the window: Berlin is not new for alice
    ("2026-03-01 08:10:00.000", "alice@example.com", 1, "imap", "198.51.100.7", "h7.pool.example.net", *BERLIN,
     "allow", "ip_networks", "allow list", 1, None),
    ("2026-03-01 09:20:00.000", "Alice@Example.com", 1, "imap", "198.51.100.7", "h7.pool.example.net", *BERLIN,
     "unknown", None, "", 1, None),
    ("2026-03-01 10:30:00.000", "alice@example.com", 1, "smtp", "203.0.113.9", "<>", *NEW_YORK,
     "unknown", None, "", 1, "new-country,new-asn"),
    ("2026-03-01 11:00:00.000", "bob@example.com", 3, "imap", "198.51.100.20", "mail.example.org", *BERLIN,
     "unknown", None, "", 1, None),
    ("2026-03-01 11:05:00.000", "bob@example.com", 3, "imap", "192.0.2.66", "vpn.bad.example.com", *VPN,
     *DENY_VPN),
    ("2026-03-01 11:30:00.000", "mallory@example.com", None, "imap", "192.0.2.66", "vpn.bad.example.com", *VPN,
     *DENY_VPN),
    ("2026-03-01 06:00:00.000", "carol@example.com", 4, "smtp", "2001:db8::5", "c5.example.net", *BERLIN,
     "refused", "policy", "service smtp not allowed (only imap)", 0, None),
    ("2026-03-01 12:00:00.000", "alice@example.com", 1, "imap", "203.0.113.99", "<>", *NEW_YORK,
     "unknown", None, "", 1, None),  # at `until`: outside
]
PASSWORDS = [  # id, uid, created, deleted, comment
    (1, "alice@example.com", "2025-06-01 00:00:00", None, "laptop"),
    (2, "alice@example.com", "2025-12-01 00:00:00", None, "old phone"),
    (3, "bob@example.com", "2025-06-01 00:00:00", None, None),
    (4, "carol@example.com", "2025-01-01 00:00:00", "2025-02-01 00:00:00", None),
    (5, "dave@example.com", "2025-01-01 00:00:00", None, "expired"),
    (6, "erin@example.com", "2026-02-28 00:00:00", None, None),
]
LOG = [(1, "2026-02-28 09:00:00.000"), (3, "2026-01-01 00:00:00.000")]


@pytest.fixture
def seeded(tmp_path):
    db = tmp_path / "appauth.sqlite"
    engine = schema.make_engine(f"sqlite:///{db}")
    schema.init_db(engine)
    engine.dispose()
    conn = sqlite3.connect(db)
    conn.executemany("INSERT INTO app_passwords (id, uid, password, created, deleted, comment) "
                     "VALUES (?, ?, 'x' || ?, ?, ?, ?)", [(p[0], p[1], p[0], *p[2:]) for p in PASSWORDS])
    conn.execute("INSERT INTO app_password_policy (pwid, expires) VALUES (5, '2026-01-01 00:00:00')")
    conn.executemany("INSERT INTO log (pwid, service, src_ip, timestamp) VALUES (?, 'imap', '192.0.2.1', ?)", LOG)
    conn.executemany(
        "INSERT INTO audit_events (timestamp, uid, pwid, service, src_ip, src_rdns, country, asn, as_org, place, "
        "latitude, longitude, result, rule, reason, authenticated, alert) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", EVENTS)
    conn.commit()
    conn.close()
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\ndsn = "sqlite:///{db}"\n\n[audit]\nenabled = false\n')
    known = tmp_path / "known.yml"
    known.write_text(KNOWN_GOOD)
    engine = schema.make_engine(f"sqlite:///{db}")
    yield argparse.Namespace(engine=engine, config=config, known=known, db=db)
    engine.dispose()


@pytest.fixture
def data(seeded):
    known = report.load_known_good(str(seeded.known))
    result = report.collect(seeded.engine, since=SINCE, until=NOW, known=known, unused_days=30)
    # round trip: what --format json prints is this dict
    return json.loads(report.render_json(result))


def test_known_good_file_in_upstreams_shape(seeded, tmp_path):
    known = report.load_known_good(str(seeded.known))
    assert known.asns == {64500}
    assert known.suffixes == ("example.org",)
    assert known.comments == {64502: "Commercial VPN", 64500: "home ISP"}
    assert known.host_known("mail.example.org") and known.host_known("Example.ORG.")
    assert not known.host_known("badexample.org") and not known.host_known("<>")
    other = tmp_path / "other.yml"
    other.write_text("known_good_asns: [680, 'as3320']\nAS_COMMENTS: {AS680: DFN}\n")
    assert report.load_known_good(str(other)).asns == {680, 3320}
    other.write_text("KNOWN_GOOD_ASNS: [ASX]\n")
    with pytest.raises(report.ReportError, match="not an AS number: 'ASX'"):
        report.load_known_good(str(other))
    other.write_text("- just a list\n")
    with pytest.raises(report.ReportError, match="expected a mapping"):
        report.load_known_good(str(other))
    with pytest.raises(report.ReportError, match="No such file"):
        report.load_known_good(str(tmp_path / "missing.yml"))


def test_totals(data):
    assert data["since"] == "2026-02-28 12:00:00" and data["until"] == "2026-03-01 12:00:00"
    assert data["totals"] == {
        "events": 7, "logins": 4, "blocked": 3, "users": 4,
        "unique_ips": 5, "unique_ips_unknown": 2, "unique_asns": 3, "unique_asns_unknown": 2,
        "alerts": 2, "unused_passwords": 2, "leaked_passwords": 0,
    }
    assert data["alerts_by_kind"] == {"new-asn": 1, "new-country": 1}


def test_blocked_users_and_why(data):
    deny = {"result": "deny", "rule": "as_numbers", "reason": "as_numbers: lists/asn.deny.lst:3 matched AS64502",
            "count": 1}
    assert data["blocked_users"] == [
        {"user": "bob@example.com", "count": 1, "reasons": [deny]},
        {"user": "carol@example.com", "count": 1, "reasons": [
            {"result": "refused", "rule": "policy", "reason": "service smtp not allowed (only imap)", "count": 1}]},
        {"user": "mallory@example.com", "count": 1, "reasons": [deny]},
    ]


def test_logins_per_user_with_new_places(data):
    alice, bob = data["users"]
    assert alice["user"] == "alice@example.com" and alice["logins"] == 3 and alice["unique_ips"] == 2
    assert alice["places"] == [
        {"country": "DE", "place": "Berlin, Land Berlin, Germany", "logins": 2},
        {"country": "US", "place": "New York, New York, United States", "logins": 1},
    ]
    # Berlin was seen before the window; New York is new
    assert alice["new_places"] == [{"country": "US", "place": "New York, New York, United States", "logins": 1,
                                    "first": "2026-03-01 10:30:00"}]
    assert alice["alerts"] == [{"time": "2026-03-01 10:30:00", "kinds": ["new-country", "new-asn"],
                                "ip": "203.0.113.9", "country": "US", "place": "New York, New York, United States"}]
    assert bob == {"user": "bob@example.com", "logins": 1, "unique_ips": 1,
                   "places": [{"country": "DE", "place": "Berlin, Land Berlin, Germany", "logins": 1}],
                   "new_places": [{"country": "DE", "place": "Berlin, Land Berlin, Germany", "logins": 1,
                                   "first": "2026-03-01 11:00:00"}],
                   "alerts": []}


def test_asns_ips_and_unknown_domains(data):
    assert data["asns"] == [
        {"asn": 64500, "as_org": "Example Telecom", "events": 4, "blocked": 1, "unique_ips": 3, "known": True,
         "comment": "home ISP"},
        {"asn": 64502, "as_org": "Example VPN", "events": 2, "blocked": 2, "unique_ips": 1, "known": False,
         "comment": "Commercial VPN"},
        {"asn": 64501, "as_org": "Example Hosting", "events": 1, "blocked": 0, "unique_ips": 1, "known": False,
         "comment": None},
    ]
    assert [(i["ip"], i["events"], i["blocked"], i["known"]) for i in data["ips"]] == [
        ("192.0.2.66", 2, 2, False), ("198.51.100.7", 2, 0, True), ("198.51.100.20", 1, 0, True),
        ("2001:db8::5", 1, 1, True), ("203.0.113.9", 1, 0, False),
    ]
    assert data["unknown_rdns_domains"] == [{"domain": "example.net", "events": 3},
                                            {"domain": "example.com", "events": 2}]


def test_unused_passwords(data):
    assert data["unused_days"] == 30
    assert data["unused_passwords"] == [
        {"id": 2, "user": "alice@example.com", "comment": "old phone", "created": "2025-12-01 00:00:00",
         "last_used": None, "idle_days": 90},
        {"id": 3, "user": "bob@example.com", "comment": None, "created": "2025-06-01 00:00:00",
         "last_used": "2026-01-01 00:00:00", "idle_days": 59},
    ]


def test_charts(data):
    assert data["charts"]["bucket"] == "hour"
    hours = data["charts"]["logins_over_time"]
    assert len(hours) == 24 and hours[0] == ["2026-02-28 12:00", 0] and hours[-1] == ["2026-03-01 11:00", 1]
    assert sum(n for _, n in hours) == 4
    assert [h for h, n in hours if n] == ["2026-03-01 08:00", "2026-03-01 09:00", "2026-03-01 10:00",
                                          "2026-03-01 11:00"]
    assert data["charts"]["logins_per_country"] == [["DE", 3], ["US", 1]]
    assert data["charts"]["logins_per_asn"] == [["AS64500 Example Telecom", 3], ["AS64501 Example Hosting", 1]]


def test_without_known_good_everything_is_unknown(seeded):
    result = report.collect(seeded.engine, since=SINCE, until=NOW, unused_days=0)
    assert result["totals"]["unique_asns_unknown"] == 3 and result["totals"]["unique_ips_unknown"] == 5
    assert result["unused_passwords"] == [] and result["totals"]["unused_passwords"] == 0


def test_empty_window(seeded):
    result = report.collect(seeded.engine, since=NOW + 3600, until=NOW + 7200, unused_days=0)
    assert result["totals"]["events"] == 0 and result["blocked_users"] == [] and result["users"] == []
    for render in report.RENDERERS.values():
        assert render(result)  # every format copes with nothing
    assert "(none)" in report.render_text(result)


def _report(seeded, *extra):
    args = argparse.Namespace(since="2026-02-28 12:00", format="text", known_good=str(seeded.known),
                              unused_days=30, mail_to=None, mail_from=None, output=None)
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        setattr(args, key, value)
    return report.run(seeded.engine, args, now=NOW)


def test_text_format(seeded):
    text = _report(seeded)
    lines = text.splitlines()
    assert lines[0] == "dovecot-appauth audit report 2026-02-28 12:00 - 2026-03-01 12:00 UTC"
    assert "  successful logins  4" in lines
    assert "  unique ASNs        3 (2 unknown)" in lines
    assert "  alerts             2 (new-asn 1, new-country 1)" in lines
    section = lines[lines.index("Unknown ASNs") + 1:lines.index("Known ASNs")]
    assert section == [
        "  EVENTS  ASN                                   IPS  BLOCKED",
        "  2       AS64502 Example VPN (Commercial VPN)  1    2",
        "  1       AS64501 Example Hosting               1",
        "",
    ]
    assert "  alice@example.com  3       2    New York, New York, United States (US) x1  " \
           "new-country+new-asn 2026-03-01 10:30 203.0.113.9" in lines
    assert "  203.0.113.9  <Example Hosting>" in "\n".join(lines).replace("  1       ", "  ")


def test_markdown_format(seeded):
    md = _report(seeded, "format", "markdown")
    assert md.startswith("# dovecot-appauth audit report")
    assert "- **blocked**: 3" in md
    assert "| USER | COUNT | RESULT | RULE | REASON |" in md
    assert "| bob@example.com | 1 | deny | as_numbers | as_numbers: lists/asn.deny.lst:3 matched AS64502 |" in md
    assert "| 1 | 203.0.113.9 | &lt;Example Hosting> |  |" in md
    assert "| 2 | alice@example.com | old phone | 2025-12-01 | never | 90 |" in md


def test_json_format(seeded, data):
    out = json.loads(_report(seeded, "format", "json"))
    out.pop("generated")
    data.pop("generated")
    assert out == data


def test_html_format_is_self_contained(seeded):
    page = _report(seeded, "format", "html")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 3
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert "<title>Successful logins per country</title>" in page
    assert "<title>DE: 3</title>" in page
    assert "<title>Successful logins per hour (UTC)</title>" in page
    assert "<title>2026-03-01 10:00: 1</title>" in page
    assert "&lt;Example Hosting&gt;" in page  # escaped


def test_html_escapes_hostile_values(seeded):
    conn = sqlite3.connect(seeded.db)
    conn.execute("INSERT INTO audit_events (timestamp, uid, src_ip, src_rdns, country, asn, as_org, result, "
                 "authenticated) VALUES ('2026-03-01 07:00:00.000', '<script>alert(1)</script>', '192.0.2.9', "
                 "'x.<img src=x>.example', '<b>', 64999, '\"><svg onload=alert(1)>', 'allow', 1)")
    conn.commit()
    conn.close()
    page = _report(seeded, "format", "html")
    assert "<script>" not in page and "<img" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_cli_report_output_file_and_bad_arguments(seeded, capsys, tmp_path):
    out = tmp_path / "report.md"
    assert cli.main(["--config", str(seeded.config), "report", "--since", "3650d", "--format", "markdown",
                     "--known-good", str(seeded.known), "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert out.read_text().startswith("# dovecot-appauth audit report")
    assert cli.main(["--config", str(seeded.config), "report", "--since", "yesterday"]) == 1
    assert "--since: not a duration" in capsys.readouterr().err
    assert cli.main(["--config", str(seeded.config), "report", "--known-good", str(tmp_path / "nope.yml")]) == 1
    assert "known-good file" in capsys.readouterr().err


def test_cli_report_on_old_database_says_upgrade(seeded, capsys):
    conn = sqlite3.connect(seeded.db)
    conn.execute("DROP TABLE audit_events")
    conn.commit()
    conn.close()
    assert cli.main(["--config", str(seeded.config), "report"]) == 1
    assert "run 'dovecot-appauth upgrade-db'" in capsys.readouterr().err


def _fake_sendmail(tmp_path: Path, status: int = 0) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "sendmail"
    script.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/sendmail.args"\ncat > "{tmp_path}/sendmail.in"\n'
                      f'echo "fake sendmail says no" >&2\nexit {status}\n')
    script.chmod(0o755)
    return bin_dir


def test_mail_html_through_sendmail(seeded, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_fake_sendmail(tmp_path)}:{os.environ['PATH']}")
    status = cli.main(["--config", str(seeded.config), "report", "--since", "3650d", "--format", "html",
                       "--known-good", str(seeded.known), "--mail-to", "admin@example.com",
                       "--mail-to", "ops@example.com", "--mail-from", "reports@example.com"])
    out, err = capsys.readouterr()
    assert status == 0 and out == "" and "report mailed to admin@example.com, ops@example.com" in err
    assert (tmp_path / "sendmail.args").read_text().split() == ["-t", "-oi"]
    msg = email.message_from_bytes((tmp_path / "sendmail.in").read_bytes(), policy=email.policy.default)
    assert msg["To"] == "admin@example.com, ops@example.com" and msg["From"] == "reports@example.com"
    assert msg["Subject"].startswith("dovecot-appauth report: 6 logins, 3 blocked, 2 alerts since ")
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",)).get_content()
    page = msg.get_body(("html",)).get_content()
    assert plain.startswith("dovecot-appauth audit report") and "Unknown ASNs" in plain
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3


def test_mail_failure_is_reported(seeded, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_fake_sendmail(tmp_path, status=75)}:{os.environ['PATH']}")
    status = cli.main(["--config", str(seeded.config), "report", "--mail-to", "admin@example.com"])
    assert status == 1
    assert "exited 75: fake sendmail says no" in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    quiet = io.StringIO()
    bar = report.Progress("reading", 10, quiet, after=0)
    bar.update(5)
    bar.close()
    assert quiet.getvalue() == ""
    tty = Tty()
    bar = report.Progress("reading", 10, tty, after=0)
    bar.update(5)
    assert tty.getvalue() == "\rreading [###############---------------]  50% 5/10"
    bar.close()
    assert tty.getvalue().endswith("\r")
    slow = Tty()
    bar = report.Progress("reading", 10, slow, after=60)  # a short run draws nothing
    bar.update(10)
    bar.close()
    assert slow.getvalue() == ""


# --- the HTML in a real browser ----------------------------------------------------------------


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(x for j, x in enumerate(line) if j % 4 != 3))
        prev = line
    return width, height, rows


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_html_report_renders_in_chromium(seeded, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing (scripts/test.sh installs it)")
        pytest.skip("chromium not installed")
    page = tmp_path / "report.html"
    page.write_text(_report(seeded, "format", "html"))
    shot = tmp_path / "report.png"
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert shot.exists(), proc.stderr[-2000:]
    if os.environ.get("APPAUTH_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["APPAUTH_KEEP_SCREENSHOT"])
    width, height, rows = read_png(shot)
    assert (width, height) == (1200, 1600)
    pixels = [row[i:i + 3] for row in rows[::4] for i in range(0, len(row), 12)]
    colours = set(pixels)
    assert len(colours) > 20, "screenshot looks blank"
    # the charts' colours are on the page: the hour columns and a country bar
    assert bytes.fromhex("2f6db5") in colours
    assert bytes.fromhex("e07b39") in colours
    white = sum(1 for p in pixels if p == b"\xff\xff\xff")
    assert white < len(pixels) * 0.97


def test_long_windows_use_coarser_columns(seeded):
    week = report.collect(seeded.engine, since=NOW - 7 * 86400, until=NOW, unused_days=0)["charts"]
    assert week["bucket"] == "hour" and len(week["logins_over_time"]) == 168
    month = report.collect(seeded.engine, since=NOW - 30 * 86400, until=NOW, unused_days=0)["charts"]
    assert month["bucket"] == "day" and len(month["logins_over_time"]) == 31  # noon to noon
    assert month["logins_over_time"][-1] == ["2026-03-01", 4]
    assert month["logins_over_time"][-10] == ["2026-02-20", 1]
    decade = report.collect(seeded.engine, since=NOW - 3650 * 86400, until=NOW, unused_days=0)["charts"]
    assert decade["bucket"] == "30 days" and sum(n for _, n in decade["logins_over_time"]) == 5


@pytest.mark.mariadb
def test_same_numbers_on_mariadb(mariadb_database, data):
    from sqlalchemy import text

    engine = schema.make_engine(mariadb_database.dsn)
    try:
        schema.init_db(engine)
        with engine.begin() as conn:
            for p in PASSWORDS:
                conn.execute(text("INSERT INTO app_passwords (id, uid, password, created, deleted, comment) "
                                  "VALUES (:id, :uid, :pw, :created, :deleted, :comment)"),
                             {"id": p[0], "uid": p[1], "pw": f"x{p[0]}", "created": p[2], "deleted": p[3],
                              "comment": p[4]})
            conn.execute(text("INSERT INTO app_password_policy (pwid, expires) VALUES (5, '2026-01-01 00:00:00')"))
            for pwid, stamp in LOG:
                conn.execute(text("INSERT INTO log (pwid, service, src_ip, timestamp) VALUES (:p, 'imap', "
                                  "'192.0.2.1', :t)"), {"p": pwid, "t": stamp})
            names = ("timestamp", "uid", "pwid", "service", "src_ip", "src_rdns", "country", "asn", "as_org", "place",
                     "latitude", "longitude", "result", "rule", "reason", "authenticated", "alert")
            for event in EVENTS:
                conn.execute(text(f"INSERT INTO audit_events ({', '.join(names)}) VALUES "
                                  f"({', '.join(':' + n for n in names)})"), dict(zip(names, event, strict=True)))
        known = report.load_known_good_text(KNOWN_GOOD)
        result = json.loads(report.render_json(report.collect(engine, since=SINCE, until=NOW, known=known,
                                                              unused_days=30)))
    finally:
        engine.dispose()
    result.pop("generated")
    data.pop("generated")
    assert result == data
