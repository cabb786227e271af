"""A cheap parser for the SQLAlchemy-style database URL in `[database] dsn`.

The per-login program must not import SQLAlchemy (about 60 ms) just to read a URL, so
this parses the two forms we support: `sqlite:///relative.db`,
`sqlite:////absolute/path.db`, and `mysql+pymysql://user:pass@host:port/db?unix_socket=...`
(also `mariadb+pymysql://` and plain `mysql://`). `tests/e2e/test_store.py` checks that it
agrees with SQLAlchemy's own `make_url`.
"""

from __future__ import annotations

from .values import Value


class DsnError(ValueError):
    """The URL cannot be used. The message never contains the password."""


def unquote(text: str) -> str:
    # urllib.parse costs a login ~1.5 ms to import; a plain SQLite path has no %-escapes
    if "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text)


def parse_qsl(query: str) -> list[tuple[str, str]]:
    if not query:
        return []
    from urllib.parse import parse_qsl

    return parse_qsl(query)


class Dsn(Value):
    __slots__ = ("database", "dialect", "host", "password", "path", "port", "query", "user")
    _repr_hidden = ("password",)

    def __init__(
        self,
        dialect: str,
        path: str | None = None,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        query: dict[str, str] | None = None,
    ):
        self.dialect = dialect  # "sqlite" or "mysql"
        self.path = path  # sqlite file
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.query = {} if query is None else query

    def redacted(self) -> str:
        """The URL for messages, with the password replaced by `***`."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.path}"
        auth = f"{self.user}:***@" if self.password is not None else (f"{self.user}@" if self.user else "")
        port = f":{self.port}" if self.port else ""
        return f"mysql+pymysql://{auth}{self.host or ''}{port}/{self.database or ''}"


def parse_dsn(url: str) -> Dsn:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise DsnError("database dsn must look like sqlite:////path/db.sqlite or mysql+pymysql://user:pass@host/db")
    dialect, _, driver = scheme.lower().partition("+")
    if dialect == "sqlite":
        if driver not in ("", "pysqlite"):
            raise DsnError(f"unsupported SQLite driver {driver!r}")
        # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db"
        path, _, query = rest.partition("?")
        if not path.startswith("/") or path == "/":
            raise DsnError("sqlite dsn needs a file: sqlite:////absolute/path.sqlite")
        path = unquote(path[1:])
        if path in ("", ":memory:"):
            raise DsnError("sqlite dsn needs a file, not an in-memory database")
        return Dsn("sqlite", path=path, query=dict(parse_qsl(query)))
    if dialect in ("mysql", "mariadb"):
        if driver not in ("", "pymysql"):
            raise DsnError(f"unsupported MySQL driver {driver!r}: use mysql+pymysql://")
        netloc, _, tail = rest.partition("/")
        database, _, query = tail.partition("?")
        userinfo, at, hostport = netloc.rpartition("@")
        user = password = None
        if at:
            u, colon, p = userinfo.partition(":")
            user = unquote(u)
            password = unquote(p) if colon else None
        host, port = hostport, None
        if hostport.startswith("["):
            host, _, after = hostport[1:].partition("]")
            if after.startswith(":"):
                port = after[1:]
        elif ":" in hostport:
            host, _, port = hostport.rpartition(":")
        try:
            port_number = int(port) if port else None
        except ValueError:
            raise DsnError("database dsn has a non-numeric port") from None
        return Dsn(
            "mysql",
            host=unquote(host) or None,
            port=port_number,
            user=user,
            password=password,
            database=unquote(database) or None,
            query=dict(parse_qsl(query)),
        )
    raise DsnError(f"unsupported database {dialect!r}: use sqlite or mysql+pymysql")
