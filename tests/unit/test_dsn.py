"""The cheap DSN parser agrees with SQLAlchemy's make_url and never leaks the password."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from dovecot_appauth.dsn import DsnError, parse_dsn

SECRET = "s3cr3t-PW"

URLS = [
    "sqlite:///relative.db",
    "sqlite:///sub/dir/x%20y.db",
    "sqlite:////abs/path/appauth.sqlite",
    "sqlite+pysqlite:////var/lib/dovecot-appauth/db.sqlite",
    "mysql+pymysql://user:p%40ss%3Aw%2Fd@db.example.com:3307/appauth",
    "mysql+pymysql://appauth:T3st%3Apw%40%2Fx%25@127.0.0.1:3306/t_abc",
    "mysql+pymysql://u:p%2B%25%3F%23@h/db",
    "mysql+pymysql://u:pa:ss@h/db",
    "mysql+pymysql://u:p@localhost/db?unix_socket=/run/mysqld/mysqld.sock",
    "mysql+pymysql://u:p@localhost/db?unix_socket=%2Ftmp%2Fmy%20sock.sock&charset=utf8mb4",
    "mysql+pymysql://u:p@[::1]:3306/db",
    "mysql+pymysql://u:p@[2001:db8::5]/db",
    "mysql+pymysql://u@host/db",
    "mysql+pymysql://u%40example.com:@host/db",
    "mysql+pymysql://host/db",
    "mysql+pymysql://u:p@host:3306",
    "mysql://u:p@host/db",
    "mariadb+pymysql://u:p@host:1/db?charset=utf8mb4",
]


@pytest.mark.parametrize("url", URLS)
def test_parse_dsn_agrees_with_sqlalchemy(url):
    ours = parse_dsn(url)
    theirs = make_url(url)
    if theirs.get_backend_name() == "sqlite":
        assert ours.dialect == "sqlite"
        assert ours.path == theirs.database
        return
    assert ours.dialect == "mysql"
    assert theirs.get_backend_name() in ("mysql", "mariadb")
    assert ours.user == theirs.username
    assert ours.password == theirs.password
    assert ours.host == theirs.host
    assert ours.port == theirs.port
    assert ours.database == theirs.database
    assert ours.query == dict(theirs.query)


def test_parse_dsn_sqlite_absolute_and_relative():
    assert parse_dsn("sqlite:////srv/db.sqlite").path == "/srv/db.sqlite"
    assert parse_dsn("sqlite:///db.sqlite").path == "db.sqlite"


def test_parse_dsn_password_escapes():
    dsn = parse_dsn("mysql+pymysql://appauth:T3st%3Apw%40%2Fx%25@127.0.0.1:3306/appauth")
    assert dsn.password == "T3st:pw@/x%"


@pytest.mark.parametrize(
    "url",
    [
        f"mysql+pymysql://appauth:{SECRET}@db.example.com:3307/appauth",
        f"mysql+pymysql://appauth:{SECRET}@[::1]/appauth?unix_socket=/run/s.sock",
        f"mariadb+pymysql://appauth:{SECRET}@db/x",
    ],
)
def test_redacted_never_contains_password(url):
    dsn = parse_dsn(url)
    text = dsn.redacted()
    assert SECRET not in text
    assert ":***@" in text
    assert SECRET not in repr(dsn)


def test_redacted_keeps_the_rest():
    dsn = parse_dsn(f"mysql+pymysql://appauth:{SECRET}@db.example.com:3307/appauth")
    assert dsn.redacted() == "mysql+pymysql://appauth:***@db.example.com:3307/appauth"
    assert parse_dsn("sqlite:////srv/db.sqlite").redacted() == "sqlite:////srv/db.sqlite"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"appauth:{SECRET}@db/appauth", "must look like"),
        (f"postgresql://appauth:{SECRET}@db/appauth", "unsupported database"),
        (f"mysql+mysqldb://appauth:{SECRET}@db/appauth", "unsupported MySQL driver"),
        (f"mysql+pymysql://appauth:{SECRET}@db:port/appauth", "non-numeric port"),
        (f"mysql+pymysql://appauth:{SECRET}@[::1]:x/appauth", "non-numeric port"),
        ("sqlite://", "needs a file"),
        ("sqlite:///", "needs a file"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite+apsw:////x.db", "unsupported SQLite driver"),
    ],
)
def test_parse_dsn_errors_never_contain_password(url, message):
    with pytest.raises(DsnError, match=message) as info:
        parse_dsn(url)
    assert SECRET not in str(info.value)
