"""Where a webhook may go: the URL's host normalised, resolved once, checked, and pinned.

The check against SSRF resolves the host once and hands back the address it checked; the sender
connects to that address, keeping the URL's host for the Host header and the TLS server name
(SNI and certificate check). A name that resolves to a public address for the check and to a
private one a moment later (DNS rebinding) therefore never reaches the private one: there is no
second lookup.

``destination_resolve`` is client-neutral (a ``Destination`` with the pinned ``address``); the
webhook sender (notifications/sender.py) pins its aiohttp connections with a resolver that only
answers the addresses checked here, so the URL, Host header, SNI and certificate check keep the
name while the socket goes to the checked address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses it resolves to (as text). A plain callable so tests can give
# answers of their own (a rebinding name) without patching the socket module.
Resolver = Callable[[str, int], list[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ASCII_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"  # no hyphen first or last, 63 at most
_ASCII_HOST = re.compile(rf"{_ASCII_LABEL}(\.{_ASCII_LABEL})*\.?")
# Prefixes that carry an IPv4 address inside an IPv6 one: a packet to them reaches that IPv4
# address through a translator or tunnel, so they are as private as what they carry.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a site's own translator
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


class DestinationRefused(ValueError):
    """The URL is not one a webhook may be sent to; the message says why, for the merchant."""


class DestinationUnresolved(DestinationRefused):
    """The host did not resolve. Refused when an endpoint is saved; at send time a failure worth
    retrying (a DNS outage must not fail deliveries for good)."""


@dataclass(frozen=True)
class Destination:
    url: str  # as the endpoint stores it
    scheme: str
    host: str  # ASCII: IDNA A-labels, or an IP literal
    port: int
    address: str  # the checked IP address the sender connects to (the first of ``addresses``)
    addresses: tuple[str, ...] = ()  # every address the host resolved to, all checked, in order

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def system_resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def host_normalise(hostname: str) -> str:
    """The host as it goes on the wire: an IP literal, or a name in ASCII (IDNA 2008 with UTS 46
    mapping, as browsers do: "Bücher.example" is "xn--bcher-kva.example")."""
    literal = _ip_literal(hostname)
    if literal is not None:
        return str(literal)
    name = hostname.lower()
    try:
        if name.isascii():
            # Plain ASCII names pass as they are (underscores included, which IDNA refuses but
            # DNS serves); labels claiming to be IDNA must decode.
            if not _ASCII_HOST.fullmatch(name) or len(name) > 253:
                raise DestinationRefused(f"{hostname!r} is not a valid host name.")
            for label in name.split("."):
                if label.startswith("xn--"):
                    idna.decode(label)
        else:
            name = idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise DestinationRefused(f"{hostname!r} is not a valid international host name.") from exc
    literal = _ip_literal(name)  # full-width digits map to an IPv4 literal
    return str(literal) if literal is not None else name


def destination_parse(url: str) -> tuple[str, str, int]:
    """(scheme, ASCII host, port) of a webhook URL, or DestinationRefused saying what is wrong."""
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:  # "[::1", a port out of range or not a number
        raise DestinationRefused(f"The URL is not valid: {exc}.") from exc
    if parts.scheme not in _DEFAULT_PORTS or not hostname:
        raise DestinationRefused("The URL must be http(s)://host/…")
    if port == 0:
        raise DestinationRefused("The URL's port must be 1-65535.")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise DestinationRefused("The URL must not contain spaces or control characters.")
    return parts.scheme, host_normalise(hostname), port or _DEFAULT_PORTS[parts.scheme]


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def address_public(address: IPAddress) -> bool:
    """Globally reachable and not multicast; an IPv6 form of an IPv4 address (NAT64, 6to4,
    IPv4-mapped or -compatible) is judged by the IPv4 address it carries."""
    if address.is_multicast or not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_public(embedded)
    return True


def destination_resolve(
    *, url: str, resolver: Resolver = system_resolve, allow_private: bool | None = None
) -> Destination:
    """Resolve the URL's host once and check every address; the sender connects to the first
    and falls back to the others, in order.

    ``allow_private`` defaults to WEBHOOK_ALLOW_PRIVATE_DESTINATIONS; allowed or not, the
    sender is pinned to the address resolved here.
    """
    scheme, host, port = destination_parse(url)
    literal = _ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = [ipaddress.ip_address(answer) for answer in resolver(host, port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise DestinationUnresolved(f"The host {host!r} does not resolve.") from exc
        if not addresses:
            raise DestinationUnresolved(f"The host {host!r} does not resolve.")
    if allow_private is None:
        allow_private = settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS
    if not allow_private:
        for address in addresses:
            if not address_public(address):
                raise DestinationRefused(
                    f"{host} resolves to {address}, a private or reserved address; "
                    "webhooks go to public addresses only."
                )
    checked = tuple(dict.fromkeys(str(address) for address in addresses))  # once each, in order
    return Destination(
        url=url, scheme=scheme, host=host, port=port, address=checked[0], addresses=checked
    )


def destination_check(*, url: str, resolver: Resolver = system_resolve) -> None:
    """When an endpoint is saved: the URL is valid and, unless private destinations are allowed,
    resolves to public addresses only."""
    if settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS:
        destination_parse(url)
        return
    destination_resolve(url=url, resolver=resolver, allow_private=False)
