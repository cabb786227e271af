"""Host names resolved within a deadline: the C library's resolver has none a caller can set.

What belongs here: `getaddrinfo_within` and `connect_within`, for the network calls of a
login that name a host (MariaDB in store.py, Nextcloud in nextcloud.py), so that a
nameserver that does not answer costs the login its configured timeout, not resolv.conf's
timeout times its attempts for each nameserver. An address needs no lookup
(`is_ip_address`) and takes the plain path. Stdlib only; `socket` is imported when used.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any


class LookupTimeout(TimeoutError):
    """The host name's lookup had no answer within the timeout (not a connect that timed out)."""


def is_ip_address(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address (nothing to resolve)."""
    from _socket import AF_INET, AF_INET6, inet_pton  # loaded with PyMySQL's socket

    for family in (AF_INET, AF_INET6):
        try:
            inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


def getaddrinfo_within(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """socket.getaddrinfo(host, port) for TCP, by `timeout` seconds (TimeoutError).

    The C library's resolver has no deadline a caller can set: with a nameserver that
    does not answer it waits resolv.conf's timeout times its attempts for each nameserver
    (10 s with the defaults, minutes with several), and a driver's or socket.create_connection's
    timeout covers only the TCP connect. So the question is asked on a thread of its own (`_thread`,
    built in: no import), and one that is late is left to end by itself: the per-login
    program exits at once, serve's thread ends when the resolver gives up.
    """
    import _thread
    import socket

    done = _thread.allocate_lock()
    done.acquire()
    answer: list[Any] = []

    def ask() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except BaseException as e:  # handed to the caller
            answer.append(e)
        finally:
            done.release()

    _thread.start_new_thread(ask, ())
    if not done.acquire(timeout=max(timeout, 0.001)):
        raise LookupTimeout
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return answer[0]


def connect_within(host: str, port: int, timeout: float) -> Any:
    """A TCP socket connected to `host` (a name or an address) within `timeout` seconds in
    all: the lookup and then each address in turn, as socket.create_connection tries them.
    Raises LookupTimeout when the lookup is late, TimeoutError when the connects are,
    OSError (socket.gaierror: no such name; the last address's error) or UnicodeError (a
    label the idna codec refuses) when no connection is made."""
    import socket
    import time

    if is_ip_address(host):
        return socket.create_connection((host, port), timeout=timeout)
    end = time.monotonic() + timeout
    addresses = getaddrinfo_within(host, port, timeout)
    last: OSError | None = None
    for family, kind, proto, _name, address in addresses:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(address)
        except OSError as e:
            sock.close()
            last = e
            continue
        return sock
    raise last or OSError(f"{host}: no address")
