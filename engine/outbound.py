"""Outbound HTTP that cannot be turned inward (the `http.request` action).

A request goes out through a requests Session whose adapters build urllib3 connections of
their own: each new connection checks its host name against HTTP_ALLOWED_HOSTS, resolves
it once, refuses it when any address it resolves to is private, loopback, link-local,
reserved, multicast or unspecified (unless HTTP_ALLOW_PRIVATE_ADDRESSES), and connects to
an address it checked. So a name that resolves differently a moment later (DNS rebinding)
and a redirect to an inner address are refused as the first request is, and TLS still
verifies the certificate against the host name. Proxies and .netrc from the environment
are not used.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family, create_connection

from engine.config import Settings
from engine.errors import NonRetryableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(NonRetryableError):
    """A request the outbound policy does not allow: trying again cannot help."""


def forbidden(address: IPAddress) -> bool:
    """Whether `address` is anything but a public unicast address, looking through the
    IPv4 address an IPv6 one carries (IPv4-mapped, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if inner is not None and forbidden(inner):
            return True
    return (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


@dataclass(frozen=True)
class Policy:
    """Which hosts a request may reach: `allowed_hosts` holds exact names and `*.domain`
    suffixes (empty: any host), `allow_private` lets it reach inner addresses."""

    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.http_allowed_hosts, settings.http_allow_private_addresses)

    def check_host(self, host: str) -> None:
        name = host.strip("[]").rstrip(".").lower()
        if not self.allowed_hosts or any(_matches(name, entry) for entry in self.allowed_hosts):
            return
        raise Refused(f"host {name!r} is not in HTTP_ALLOWED_HOSTS")

    def check_address(self, host: str, address: str) -> None:
        if self.allow_private:
            return
        ip = ipaddress.ip_address(address.partition("%")[0])  # no IPv6 zone
        if forbidden(ip):
            raise Refused(
                f"host {host!r} resolves to {ip}, a private or reserved address "
                "(HTTP_ALLOW_PRIVATE_ADDRESSES is off)"
            )

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """Check `host`, resolve it, check every address: getaddrinfo's entries."""
        self.check_host(host)
        entries = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
        for *_, sockaddr in entries:
            self.check_address(host.rstrip("."), str(sockaddr[0]))
        return entries


def _matches(name: str, entry: str) -> bool:
    entry = entry.strip("[]").rstrip(".").lower()
    if entry.startswith("*."):
        return name.endswith(entry[1:]) and len(name) > len(entry) - 1
    return name == entry


class _Checked:
    """What the guarded connections share: `_new_conn` as urllib3's, to a checked address."""

    policy: Policy
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            entries = self.policy.resolve(self._dns_host, self.port)  # type: ignore[attr-defined]
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        error: OSError | None = None
        for *_, sockaddr in entries:
            try:
                return create_connection(
                    (str(sockaddr[0]), self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                message = f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
                raise ConnectTimeoutError(self, message) from exc
            except OSError as exc:
                error = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")  # type: ignore[arg-type]


def _adapter(policy: Policy) -> HTTPAdapter:
    """An adapter whose pools make connections checked by `policy`."""
    adapter = HTTPAdapter(max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = _pool_classes(policy)
    return adapter


@lru_cache(maxsize=16)
def _pool_classes(policy: Policy) -> dict[str, type]:
    """The pool classes whose connections `policy` checks: made once per policy, not for
    every request."""
    connection = type("CheckedHTTPConnection", (_Checked, HTTPConnection), {"policy": policy})
    tls_connection = type("CheckedHTTPSConnection", (_Checked, HTTPSConnection), {"policy": policy})
    return {
        "http": type("CheckedPool", (HTTPConnectionPool,), {"ConnectionCls": connection}),
        "https": type("CheckedTLSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls_connection}),
    }


def session(policy: Policy, max_redirects: int) -> requests.Session:
    """A Session for one action: only http and https, each connection checked by `policy`,
    at most `max_redirects` redirects, nothing taken from the environment."""
    client = requests.Session()
    client.trust_env = False
    client.max_redirects = max_redirects
    client.adapters.clear()
    adapter = _adapter(policy)
    client.mount("http://", adapter)
    client.mount("https://", adapter)
    return client
