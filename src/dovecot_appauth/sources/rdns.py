"""Reverse DNS (PTR) lookups with dnspython, against configured resolvers or the system's.

Imported lazily by enrich.py on a cache miss only: dnspython costs tens of milliseconds
to import, which a warm login must not pay.
"""

from __future__ import annotations

import dns.exception
import dns.resolver
import dns.reversename

from ..config import DnsConfig
from ..facts import NO_PTR
from . import SourceUnavailable


class RdnsError(Exception):
    """The resolver answered with an error (SERVFAIL, REFUSED, ...): not the same as no name."""


def lookup(ip: str, cfg: DnsConfig, timeout: float) -> str:
    """The PTR name of `ip` without the trailing dot, or NO_PTR when there is none.

    Raises TimeoutError when no answer came within `timeout` seconds (all tries together)
    and RdnsError on a server failure, so neither is mistaken for "no PTR".
    """
    try:
        resolver = dns.resolver.Resolver(configure=not cfg.resolvers)
    except dns.resolver.NoResolverConfiguration as e:
        raise SourceUnavailable(f"no system resolver: {e}") from None
    if cfg.resolvers:
        resolver.nameservers = list(cfg.resolvers)
    resolver.port = cfg.port
    # lifetime bounds the whole query including retries to other nameservers
    resolver.lifetime = timeout
    resolver.timeout = timeout
    try:
        answer = resolver.resolve(dns.reversename.from_address(ip), "PTR")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return NO_PTR
    except dns.exception.Timeout as e:
        raise TimeoutError(f"no DNS answer within {timeout:g}s") from e
    except dns.resolver.NoNameservers as e:
        raise RdnsError(f"DNS server failure: {e}") from None
    except dns.exception.DNSException as e:
        raise RdnsError(f"DNS error: {e}") from None
    # several PTRs are legal; the first one in the answer is what gethostbyaddr returns too
    for rr in answer:
        return rr.target.to_text(omit_final_dot=True)
    return NO_PTR
