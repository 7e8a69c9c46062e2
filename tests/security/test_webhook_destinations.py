"""SSRF: webhook endpoints may not point at private, loopback, link-local or reserved addresses,
neither when created or changed over the API nor when a delivery is sent (DNS may have changed).
The suite allows private destinations (its receivers listen on 127.0.0.1); these tests don't."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from notifications.delivery import deliveries_create, webhook_deliver
from notifications.destinations import (
    DestinationRefused,
    address_public,
    destination_parse,
    destination_resolve,
)
from notifications.endpoints import webhook_endpoint_create
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from notifications.sender import Claim, Outcome, Sender, Target
from resilience import clock
from testing.receivers import Receiver
from tests.conftest import api_client_for
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

PRIVATE = [
    "http://127.0.0.1/hooks",
    "http://localhost:8080/hooks",
    "http://[::1]/hooks",
    "http://10.1.2.3/hooks",
    "http://172.16.0.1/hooks",
    "http://192.168.1.1/hooks",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata service
    "http://100.64.0.1/hooks",  # carrier-grade NAT
    "http://0.0.0.0/hooks",
    "http://[::ffff:127.0.0.1]/hooks",  # IPv4-mapped loopback
    "http://[fd00::1]/hooks",
    "https://224.0.0.1/hooks",  # multicast
    "http://[64:ff9b::7f00:1]/hooks",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/hooks",  # NAT64 of 169.254.169.254
    "http://[64:ff9b:1::a00:1]/hooks",  # a site's own NAT64 prefix
    "http://[2002:a00:1::1]/hooks",  # 6to4 of 10.0.0.1
    "http://[2002:7f00:1::]/hooks",  # 6to4 of 127.0.0.1
    "http://[::7f00:1]/hooks",  # IPv4-compatible 127.0.0.1
    "http://[::a9fe:a9fe]/hooks",  # IPv4-compatible 169.254.169.254
]


@pytest.fixture(autouse=True)
def _private_destinations_refused(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = False


@pytest.mark.parametrize("url", PRIVATE)
def test_given_a_private_destination_when_an_endpoint_is_created_then_it_is_refused(api, url):
    response = api.post("/api/v1/webhook-endpoints", {"url": url}, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "url_not_allowed"
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("url", PRIVATE[:4])
def test_given_a_public_endpoint_when_its_url_is_changed_to_a_private_one_then_it_is_refused(
    api, merchant, url
):
    endpoint, _ = webhook_endpoint_create(owner=merchant.public_id, url="https://93.184.215.14/h")

    response = api.patch(
        f"/api/v1/webhook-endpoints/{endpoint.public_id}", {"url": url}, format="json"
    )

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "url_not_allowed"
    endpoint.refresh_from_db()
    assert endpoint.url == "https://93.184.215.14/h"


def test_given_an_endpoint_that_became_private_when_a_delivery_is_sent_then_nothing_is_posted(
    merchant, settings
):
    with Receiver() as receiver:
        settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = True
        webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)
        settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = False  # e.g. its name now resolves inside
        event = Event.objects.get(
            subject=make_payment(merchant=merchant).public_id, type="payment.created"
        )
        (delivery,) = deliveries_create(event=event)

        status = webhook_deliver(delivery_id=delivery.pk)

        assert receiver.requests == []
    assert status == WebhookDelivery.Status.FAILED
    delivery.refresh_from_db()
    assert "private" in delivery.last_error


# --- IPv6 forms of IPv4 addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::5db8:d70e", "2002:5db8:d70e::1", "::ffff:93.184.215.14", "2606:2800:21f:cb07::1"],
)
def test_given_ipv6_forms_of_a_public_address_then_they_pass_the_filter(address):
    assert address_public(ipaddress.ip_address(address))


def test_given_a_name_resolving_to_a_nat64_private_address_when_checked_then_it_is_refused():
    with pytest.raises(DestinationRefused, match="private"):
        destination_resolve(
            url="https://hooks.example/h", resolver=lambda host, port: ["64:ff9b::a9fe:a9fe"]
        )


# --- pinning: the address checked is the address connected to -----------------------------------


class RecordingResolver:
    """A DNS that answers from a script, one answer per lookup: a rebinding name."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


def _send(
    url: str, resolver: Callable[[str, int], list[str]], tls: ssl.SSLContext | None = None
) -> Outcome:
    """One delivery attempt through the webhook sender itself, resolving with ``resolver``."""
    claim = Claim(
        delivery_id=1,
        token=1,
        until=clock.now() + timedelta(minutes=5),
        priority=0,
        target=Target(public_id="we_pinning", url=url, secrets=("whsec_pinning",)),
        webhook_id="evt_pinning",
        body=b"{}",
    )

    async def run() -> list[Outcome]:
        outcomes: list[Outcome] = []
        sender = Sender(
            on_outcome=outcomes.append,
            resolve_destination=lambda u: destination_resolve(
                url=u, resolver=resolver, allow_private=True
            ),
            tls=tls,
        )
        try:
            sender.submit([claim])
            await sender.wait_idle()
        finally:
            await sender.close()
        return outcomes

    (outcome,) = asyncio.run(run())
    return outcome


def test_given_a_name_that_rebinds_to_another_address_when_sent_then_the_checked_address_receives_it():
    with Receiver() as checked, Receiver(host="127.0.0.2", port=checked.port) as rebound:
        resolver = RecordingResolver(["127.0.0.1"], ["127.0.0.2"])

        outcome = _send(f"http://rebind.test:{checked.port}/hooks", resolver)

        assert [a.status_code for a in outcome.attempts] == [200]
        assert resolver.asked == [("rebind.test", checked.port)]  # one lookup, none at send time
        (request,) = checked.requests
        assert request.headers["host"] == f"rebind.test:{checked.port}"
        assert rebound.requests == []


def test_given_two_merchants_on_one_host_when_one_receiver_sets_a_cookie_then_no_request_carries_it():
    # One session sends for every merchant: a kept cookie would go from one to the other.
    with Receiver(headers={"Set-Cookie": "session=merchant-a; Path=/"}) as receiver:
        resolver = RecordingResolver(["127.0.0.1"])
        base = f"http://shared.test:{receiver.port}"

        def claim(n: int, path: str) -> Claim:
            return Claim(
                delivery_id=n, token=1, until=clock.now() + timedelta(minutes=5), priority=1,
                target=Target(public_id=f"we_{path}", url=f"{base}/{path}", secrets=("whsec_c",)),
                webhook_id=f"evt_cookie{n}", body=b"{}",
            )  # fmt: skip

        async def run() -> list[Outcome]:
            outcomes: list[Outcome] = []
            sender = Sender(
                on_outcome=outcomes.append,
                resolve_destination=lambda u: destination_resolve(
                    url=u, resolver=resolver, allow_private=True
                ),
            )
            try:
                for one in (claim(1, "merchant-a"), claim(2, "merchant-b"), claim(3, "merchant-a")):
                    sender.submit([one])  # one after the other: the cookie is set before the next
                    await sender.wait_idle()
            finally:
                await sender.close()
            return outcomes

        outcomes = asyncio.run(run())

        assert [o.attempts[-1].status_code for o in outcomes] == [200, 200, 200]
        assert [r.headers.get("cookie") for r in receiver.requests] == [None, None, None]


class FailingDns:
    """A DNS that is down: every lookup fails as getaddrinfo does."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked += 1
        raise OSError(-3, "Temporary failure in name resolution")


def test_given_dns_down_at_send_time_when_sent_then_the_attempt_fails_retryably_not_for_good():
    outcome = _send("http://hooks.example.test:9/hooks", FailingDns())

    (attempt,) = outcome.attempts
    assert attempt.status_code is None
    assert "does not resolve" in attempt.error
    assert not attempt.final  # retried on the delivery's schedule, counted by the breaker


def test_given_a_name_with_two_addresses_when_the_first_refuses_then_the_second_receives_it():
    with Receiver() as receiver:
        # Nothing listens on 127.0.0.3 at this port: connection refused, then the next address.
        resolver = RecordingResolver(["127.0.0.3", "127.0.0.1"])

        outcome = _send(f"http://two.test:{receiver.port}/hooks", resolver)

        assert [a.status_code for a in outcome.attempts] == [200]
        assert resolver.asked == [("two.test", receiver.port)]
        assert len(receiver.requests) == 1


def _certificate_authority(name: str) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str]]:
    """(server context for ``name``, client context trusting only its CA, SNI names seen)."""
    now = datetime.now(UTC)
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    seen: list[str] = []
    server.sni_callback = lambda sock, server_name, context: seen.append(server_name)
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    key = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "leaf.pem").write_bytes(pem + key)
        server.load_cert_chain(Path(directory) / "leaf.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client, seen


def test_given_an_idn_https_host_when_sent_pinned_then_sni_host_and_certificate_use_its_ascii_name():
    ascii_name = "xn--bcher-kva.example.test"
    server_tls, client_tls, sni_seen = _certificate_authority(ascii_name)
    with Receiver(tls=server_tls) as receiver:
        resolver = RecordingResolver(["127.0.0.1"])

        outcome = _send(
            f"https://B\u00fccher.Example.test:{receiver.port}/hooks", resolver, tls=client_tls
        )

        assert [a.status_code for a in outcome.attempts] == [200]
        assert resolver.asked == [(ascii_name, receiver.port)]
        assert sni_seen == [ascii_name]  # the certificate was checked against the name too
        assert receiver.requests[0].headers["host"] == f"{ascii_name}:{receiver.port}"


def test_given_an_idn_host_resolving_to_a_private_address_then_it_is_refused_after_normalising():
    resolver = RecordingResolver(["10.0.0.1"])

    with pytest.raises(DestinationRefused, match="private"):
        destination_resolve(url="https://b\u00fccher.example/h", resolver=resolver)

    assert resolver.asked == [("xn--bcher-kva.example", 443)]


# --- invalid URLs: a failed delivery, never a 500 or a delivery left pending --------------------

INVALID = [
    "http://exa mple.com/hooks",
    "http://[::1/hooks",
    "https://\u2603.example/hooks",  # a symbol IDNA does not allow
    "http://xn--zz-.example/hooks",  # not valid punycode
    "http://-bad-.example/hooks",
    "http://example.com:0/hooks",
    "http://example.com:99999/hooks",
    "http://exa\tmple.com/hooks",  # urlsplit drops tabs; the URL is refused for having one
    "http://example.com\x7f.evil/hooks",
    "ftp://example.com/hooks",
]


@pytest.mark.parametrize("url", INVALID)
def test_given_an_invalid_url_when_parsed_then_it_is_refused_with_a_reason(url):
    with pytest.raises(DestinationRefused) as refused:
        destination_parse(url)
    assert str(refused.value)


@pytest.mark.parametrize("allow_private", [True, False])
@pytest.mark.parametrize("url", INVALID)
def test_given_an_endpoint_with_an_invalid_url_when_delivered_or_redelivered_then_the_delivery_fails_with_a_reason(
    merchant, settings, url, allow_private
):
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = True
    endpoint, _ = webhook_endpoint_create(owner=merchant.public_id, url="http://127.0.0.1:9/h")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=url)  # e.g. saved by an older check
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = allow_private
    event = Event.objects.get(
        subject=make_payment(merchant=merchant).public_id, type="payment.created"
    )
    (delivery,) = deliveries_create(event=event)

    assert webhook_deliver(delivery_id=delivery.pk) == WebhookDelivery.Status.FAILED
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.next_attempt_at) == (1, None)
    assert "URL" in delivery.last_error or "host" in delivery.last_error

    response = api_client_for(merchant).post(f"/api/v1/events/{event.public_id}/redeliver")
    assert response.status_code == 200, response.content
    assert response.json()["data"][0]["status"] == "failed"
