"""pytest fixtures for the local DNS / RDAP servers of tests/support/localservers.py.

Registered by the lead in tests/conftest.py with
`pytest_plugins = ["tests.support.servers"]`. Session-scoped servers are shared (their
tables never change); tests that count requests or stop a server start their own with
the `fresh_*` fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dovecot_appauth.config import Config
from tests.support.localservers import ASN_MMDB, CITY_MMDB, BlackHoleDns, LocalDns, LocalRdap, make_config


@pytest.fixture(scope="session")
def dns_server() -> Iterator[LocalDns]:
    with LocalDns() as server:
        yield server


@pytest.fixture(scope="session")
def blackhole_dns() -> Iterator[BlackHoleDns]:
    with BlackHoleDns() as server:
        yield server


@pytest.fixture(scope="session")
def rdap_server() -> Iterator[LocalRdap]:
    with LocalRdap(slow_seconds=5.0) as server:
        yield server


@pytest.fixture
def fresh_dns_server() -> Iterator[LocalDns]:
    with LocalDns() as server:
        yield server


@pytest.fixture
def fresh_rdap_server() -> Iterator[LocalRdap]:
    with LocalRdap(slow_seconds=5.0) as server:
        yield server


@pytest.fixture(scope="session")
def mmdb_paths() -> tuple[str, str]:
    """(city, asn) paths of the committed test databases."""
    return CITY_MMDB, ASN_MMDB


@pytest.fixture
def audit_config(tmp_path, dns_server: LocalDns, rdap_server: LocalRdap) -> Callable[..., Config]:
    """Factory: a Config with every source on the local servers and a cache in tmp_path.

    Keyword arguments override make_config's (dns=None disables a source, and so on).
    """

    def factory(**overrides) -> Config:
        kwargs = {"dns": dns_server.dns_config(), "rdap": rdap_server.rdap_config()}
        kwargs.update(overrides)
        return make_config(str(tmp_path / "cache"), **kwargs)

    return factory
