"""The outbound guard: which webhook URLs may be registered and called, in every address form."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks.webhooks import Webhook

from infra.webhooks.guard import (
    AllowList,
    UnsafeTarget,
    blocked_reason,
    check_registration,
    literal,
    parse,
    pin,
)
from infra.webhooks.signing import headers, new_secret, secret_bytes

NOTHING = AllowList()


def no_dns(host: str, port: int) -> list[str]:
    raise OSError("no DNS in unit tests")


def resolves_to(*addresses: str):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


#: Hosts that mean this machine, a private network or a metadata service, in many spellings.
BLOCKED = [
    # loopback, dotted and otherwise
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",  # decimal
    "0x7f000001",  # hex
    "0x7f.0x0.0x0.0x1",
    "0x7f.1",
    "0177.0.0.1",  # octal
    "017700000001",
    "0177.0.0.01",
    "127.255.255.254",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",  # IPv4-compatible (deprecated)
    "[64:ff9b::127.0.0.1]",  # NAT64
    "[2002:7f00:1::]",  # 6to4 around 127.0.0.1
    # unspecified
    "0.0.0.0",
    "0",
    "[::]",
    # private networks
    "10.0.0.1",
    "10.255.255.255",
    "167772161",  # 10.0.0.1 in decimal
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "0xc0a80001",  # 192.168.0.1 in hex
    "[::ffff:192.168.0.1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    # link-local and cloud metadata
    "169.254.169.254",
    "2852039166",  # 169.254.169.254 in decimal
    "0xa9fea9fe",
    "0251.0376.0251.0376",
    "[::ffff:169.254.169.254]",
    "[fe80::1]",
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "168.63.129.16",  # Azure wire server
    "100.100.100.200",  # Alibaba metadata (CGNAT)
    "metadata.google.internal",
    "metadata",
    # carrier-grade NAT
    "100.64.0.1",
    "100.127.255.254",
    # multicast, broadcast, reserved, documentation, benchmarking
    "224.0.0.1",
    "239.255.255.250",
    "[ff02::1]",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.1",
    "198.51.100.7",
    "203.0.113.9",
    "198.18.0.1",
    "192.0.0.8",
    "[2001:db8::1]",
    # names for this machine
    "localhost",
    "LOCALHOST",
    "localhost.",
    "api.localhost",
]


@pytest.mark.parametrize("host", BLOCKED)
def test_internal_addresses_are_refused_at_registration(host: str) -> None:
    with pytest.raises(UnsafeTarget):
        check_registration(f"https://{host}/hook", NOTHING, no_dns)
    with pytest.raises(UnsafeTarget):
        check_registration(f"https://{host}:8443/hook", NOTHING, no_dns)


@pytest.mark.parametrize("host", BLOCKED)
def test_internal_addresses_are_refused_at_send_time(host: str) -> None:
    with pytest.raises(UnsafeTarget):
        pin(parse(f"https://{host}/hook", NOTHING), NOTHING, resolves_to("93.184.215.14"))


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:10.0.0.1", "fd00::5", "0.0.0.0"],
)
def test_a_name_resolving_to_an_internal_address_is_refused(address: str) -> None:
    with pytest.raises(UnsafeTarget, match=r"hooks\.example\.org resolves to"):
        check_registration("https://hooks.example.org/x", NOTHING, resolves_to(address))
    with pytest.raises(UnsafeTarget):
        pin(parse("https://hooks.example.org/x", NOTHING), NOTHING, resolves_to(address))


def test_one_internal_answer_among_public_ones_is_enough_to_refuse() -> None:
    """A rebinding answer may mix addresses; every one of them must pass."""
    mixed = resolves_to("93.184.215.14", "127.0.0.1")
    with pytest.raises(UnsafeTarget):
        pin(parse("https://hooks.example.org/x", NOTHING), NOTHING, mixed)


@pytest.mark.parametrize(
    "host",
    [
        "93.184.215.14",
        "1.1.1.1",
        "8.8.8.8",
        "1558796046",  # 92.233.136.14 in decimal: odd, but public
        "[2606:4700:4700::1111]",
        "[::ffff:8.8.8.8]",
        "[2002:0808:0808::]",  # 6to4 around a public address
        "[64:ff9b::808:808]",  # NAT64 of 8.8.8.8
    ],
)
def test_public_addresses_pass(host: str) -> None:
    check_registration(f"https://{host}/hook", NOTHING, no_dns)
    target = parse(f"https://{host}/hook", NOTHING)
    assert pin(target, NOTHING, no_dns) is not None


def test_a_public_name_is_pinned_to_its_first_checked_address() -> None:
    target = parse("https://hooks.example.org:8443/in?x=1", NOTHING)
    assert str(pin(target, NOTHING, resolves_to("93.184.215.14", "93.184.215.15"))) == (
        "93.184.215.14"
    )
    assert target.host_header == "hooks.example.org:8443"
    assert parse("https://hooks.example.org/in", NOTHING).host_header == "hooks.example.org"


def test_a_name_that_does_not_resolve_yet_may_be_registered_but_not_sent_to() -> None:
    check_registration("https://not-yet.example.org/hook", NOTHING, no_dns)
    with pytest.raises(UnsafeTarget, match="does not resolve"):
        pin(parse("https://not-yet.example.org/hook", NOTHING), NOTHING, no_dns)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://93.184.215.14/x", "https"),
        ("file:///etc/passwd", "https"),
        ("gopher://93.184.215.14/", "https"),
        ("http://93.184.215.14/x", "https"),  # plain http to the internet
        ("http://hooks.example.org/x", "https"),
        ("https://user:pass@93.184.215.14/x", "credentials"),
        ("https://93.184.215.14:0/x", "port"),
        ("https://93.184.215.14:70000/x", "port"),
        ("https://93.184.215.14/x#frag", "fragment"),
        ("https:///x", "host"),
        ("not a url", "https|valid"),
        ("https://" + "a" * 2100 + ".org/", "longer"),
        ("https://exa mple.org/", "valid"),
        ("https://[::1/", "valid"),
    ],
)
def test_malformed_or_unwanted_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeTarget, match=why):
        check_registration(url, NOTHING, no_dns)


def test_the_allow_list_opens_hosts_and_networks() -> None:
    allow = AllowList.parse(" 127.0.0.1 , 10.0.0.0/8, hooks.lan., [::1] ")
    check_registration("http://127.0.0.1:9000/hook", allow, no_dns)
    check_registration("http://10.20.30.40/hook", allow, no_dns)
    check_registration("http://[::1]:9000/hook", allow, no_dns)
    check_registration("http://hooks.lan/hook", allow, resolves_to("192.168.1.5"))
    assert str(pin(parse("http://hooks.lan/x", allow), allow, resolves_to("192.168.1.5"))) == (
        "192.168.1.5"
    )
    with pytest.raises(UnsafeTarget):
        check_registration("https://192.168.1.5/hook", allow, no_dns)  # not listed
    with pytest.raises(UnsafeTarget):
        check_registration("https://169.254.169.254/", allow, no_dns)
    with pytest.raises(UnsafeTarget):  # a name in an allowed network still needs https or a listing
        check_registration("http://other.lan/hook", allow, no_dns)
    check_registration("http://other.lan/hook", allow, resolves_to("10.1.1.1"))


def test_numeric_forms_are_read_as_the_c_library_reads_them() -> None:
    assert str(literal("2130706433")) == "127.0.0.1"
    assert str(literal("0x7f.1")) == "127.0.0.1"
    assert str(literal("0177.0.0.1")) == "127.0.0.1"
    assert str(literal("::ffff:127.0.0.1")) == "::ffff:7f00:1"
    assert literal("hooks.example.org") is None
    assert literal("1.2.3.4.5") is None


def test_reasons_name_the_kind_of_address() -> None:
    import ipaddress

    reason = blocked_reason(ipaddress.ip_address("::ffff:169.254.169.254"))
    assert reason is not None and "link-local" in reason and "embedded" in reason
    assert blocked_reason(ipaddress.ip_address("168.63.129.16")) == "a cloud metadata address"
    assert blocked_reason(ipaddress.ip_address("100.64.1.1")) == (
        "a shared (carrier-grade NAT) address"
    )
    assert blocked_reason(ipaddress.ip_address("93.184.215.14")) is None


# -- signing -----------------------------------------------------------------------------------


def test_secrets_are_whsec_and_24_to_64_random_bytes() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64
        assert secret_bytes(secret) == base64.b64decode(secret[6:])


def test_signatures_verify_with_the_standardwebhooks_library_one_secret_at_a_time() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"specversion":"1.0","id":"e1"}'
    import time

    signed = headers([new, old], "e1", int(time.time()), body)
    assert signed["webhook-id"] == "e1"
    assert len(signed["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(body, signed) == {"specversion": "1.0", "id": "e1"}
    assert Webhook(old).verify(body, signed) == {"specversion": "1.0", "id": "e1"}
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, signed)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + b" ", signed)
