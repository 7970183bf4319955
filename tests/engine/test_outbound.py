"""The outbound policy: which addresses and hosts a request may reach, checked on the
addresses actually connected to, redirects included (real sockets, real resolver)."""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
from pathlib import Path

import pytest
import requests

from engine import outbound
from engine.outbound import Policy, Refused
from tests.support.origin import Answer, origin


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.9.10",
        "169.254.169.254",  # cloud metadata: link-local
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
    ],
)
def test_private_loopback_link_local_reserved_and_multicast_addresses_are_forbidden(
    address: str,
) -> None:
    assert outbound.forbidden(ipaddress.ip_address(address))
    with pytest.raises(Refused, match="private or reserved"):
        Policy().check_address("example.com", address)
    Policy(allow_private=True).check_address("example.com", address)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not outbound.forbidden(ipaddress.ip_address(address))
    Policy().check_address("example.com", address)


def test_a_host_name_is_judged_by_the_addresses_it_resolves_to() -> None:
    with pytest.raises(Refused, match="'localhost' resolves to (127.0.0.1|::1)"):
        Policy().resolve("localhost", 80)
    entries = Policy(allow_private=True).resolve("localhost", 80)
    assert {str(entry[4][0]) for entry in entries} <= {"127.0.0.1", "::1"}


def test_the_allow_list_takes_exact_names_and_subdomains_of_a_star_entry() -> None:
    policy = Policy(("api.example.com", "*.partner.io"))
    policy.check_host("api.example.com")
    policy.check_host("API.Example.com.")
    policy.check_host("eu.partner.io")
    policy.check_host("a.b.partner.io")
    for host in ("example.com", "api.example.com.evil.net", "partner.io", "evilpartner.io"):
        with pytest.raises(Refused, match="not in HTTP_ALLOWED_HOSTS"):
            policy.check_host(host)
    Policy().check_host("anything.example")  # empty: any host


def test_the_default_policy_refuses_a_loopback_server_before_connecting() -> None:
    with origin() as server:
        url = server.script("/hello", Answer(200, {"hello": "world"}))
        with outbound.session(Policy(), 5) as client, pytest.raises(Refused):
            client.get(url, timeout=5)
        with outbound.session(Policy(allow_private=True), 5) as client:
            assert client.get(url, timeout=5).json() == {"hello": "world"}
    assert len(server.received) == 1


def test_an_allow_list_miss_is_refused_before_connecting() -> None:
    with origin() as server:
        url = server.script("/hello", Answer(200, "hi"))
        allowed = Policy(("localhost",), allow_private=True)
        with outbound.session(allowed, 5) as client, pytest.raises(Refused, match="127.0.0.1"):
            client.get(url, timeout=5)
        with outbound.session(allowed, 5) as client:
            assert client.get(url.replace("127.0.0.1", "localhost"), timeout=5).text == "hi"
    assert len(server.received) == 1


class _FirstHopPublic(Policy):
    """Takes 127.0.0.2 for a public address: the first hop of a redirect."""

    def check_address(self, host: str, address: str) -> None:
        if address != "127.0.0.2":
            super().check_address(host, address)


def test_a_redirect_to_a_loopback_address_is_refused_on_its_own_connection() -> None:
    with origin("127.0.0.1") as inner, origin("127.0.0.2") as outer:
        target = inner.script("/secret", Answer(200, {"secret": True}))
        start = outer.script("/go", Answer(302, "", {"Location": target}))
        with outbound.session(_FirstHopPublic(), 5) as client:
            with pytest.raises(Refused, match="'127.0.0.1' resolves to 127.0.0.1"):
                client.get(start, timeout=5)
    assert len(outer.received) == 1
    assert inner.received == []  # never reached


def test_a_redirect_to_a_host_off_the_allow_list_is_refused() -> None:
    with origin() as server:
        target = server.script("/there", Answer(200, "there"))
        start = server.script("/go", Answer(302, "", {"Location": target}))
        policy = Policy(("localhost",), allow_private=True)
        with outbound.session(policy, 5) as client:
            with pytest.raises(Refused, match="not in HTTP_ALLOWED_HOSTS"):
                client.get(start.replace("127.0.0.1", "localhost"), timeout=5)
    assert [r.path for r in server.received] == ["/go"]


def test_tls_still_verifies_the_host_name_on_the_checked_address(tmp_path: Path) -> None:
    """The connection goes to the address the policy checked, yet the certificate is
    matched against the URL's host name: `localhost` passes, `127.0.0.1` (not in the
    certificate) fails verification."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with origin("127.0.0.1", context) as server:
        url = server.script("/hello", Answer(200, {"tls": True}))
        assert url.startswith("https://127.0.0.1:")
        with outbound.session(Policy(allow_private=True), 5) as client:
            by_name = url.replace("127.0.0.1", "localhost")
            assert client.get(by_name, timeout=5, verify=str(cert)).json() == {"tls": True}
            with pytest.raises(requests.exceptions.SSLError):
                client.get(url, timeout=5, verify=str(cert))
        with outbound.session(Policy(), 5) as client, pytest.raises(Refused):
            client.get(by_name, timeout=5, verify=str(cert))
