"""The payment state machine: legal moves, illegal ones, no-op repeats, one event per move."""

from __future__ import annotations

import itertools

import pytest

from payments import services, states
from payments.errors import InvalidTransition
from payments.models import PaymentEvent
from payments.states import PaymentStatus as S
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

# For each status, the path of (status, operator) moves that reaches it from a new payment.
PATH_TO: dict[str, list[tuple[S, bool]]] = {
    S.PENDING: [],
    S.PROCESSING: [(S.PROCESSING, False)],
    S.SETTLED: [(S.PROCESSING, False), (S.SETTLED, False)],
    S.EXPIRED: [(S.EXPIRED, False)],
    S.INVALID: [(S.PROCESSING, False), (S.INVALID, False)],
    S.CANCELLED: [(S.CANCELLED, False)],
}
ALL_PAIRS = [(a, b) for a, b in itertools.product(S.values, S.values) if a != b]
LEGAL = [(a, b) for a, b in ALL_PAIRS if states.is_allowed(a, b)]
ILLEGAL = [(a, b) for a, b in ALL_PAIRS if not states.is_allowed(a, b)]


def payment_in(status: str):
    payment = make_payment()
    for to_status, operator in PATH_TO[status]:
        services.payment_transition(
            payment=payment, to_status=to_status, reason="setup", operator=operator
        )
    assert payment.status == status
    return payment


def test_the_declared_machine_matches_the_specification():
    assert set(LEGAL) == {
        (S.PENDING, S.PROCESSING),
        (S.PENDING, S.EXPIRED),
        (S.PENDING, S.CANCELLED),
        (S.PROCESSING, S.SETTLED),
        (S.PROCESSING, S.INVALID),
        (S.PROCESSING, S.PENDING),
        (S.SETTLED, S.PROCESSING),
        (S.SETTLED, S.INVALID),
        (S.EXPIRED, S.PROCESSING),
        (S.EXPIRED, S.SETTLED),
        (S.EXPIRED, S.INVALID),
        (S.INVALID, S.SETTLED),
    }


@pytest.mark.parametrize(("from_status", "to_status"), LEGAL)
def test_every_legal_transition_writes_exactly_one_event_with_the_next_sequence(
    from_status, to_status
):
    payment = payment_in(from_status)
    sequence_before = payment.event_sequence
    operator = (from_status, to_status) in states.OPERATOR_TRANSITIONS

    changed = services.payment_transition(
        payment=payment, to_status=to_status, reason="test", operator=operator
    )

    assert changed is True
    assert payment.status == to_status
    new_events = list(PaymentEvent.objects.filter(payment=payment, sequence__gt=sequence_before))
    assert [e.sequence for e in new_events] == [sequence_before + 1]
    assert payment.event_sequence == sequence_before + 1
    event = new_events[0]
    assert event.data["from"]["status"] == from_status
    assert event.data["to"]["status"] == to_status
    assert event.data["payment"]["status"] == to_status
    expected_type = (
        PaymentEvent.Type.EXPIRED if to_status == S.EXPIRED else PaymentEvent.Type.STATUS_CHANGED
    )
    assert event.type == expected_type


@pytest.mark.parametrize(("from_status", "to_status"), ILLEGAL)
def test_every_illegal_transition_is_rejected_and_changes_nothing(from_status, to_status):
    payment = payment_in(from_status)
    events_before = PaymentEvent.objects.filter(payment=payment).count()

    with pytest.raises(InvalidTransition):
        services.payment_transition(
            payment=payment, to_status=to_status, reason="test", operator=True
        )

    payment.refresh_from_db()
    assert payment.status == from_status
    assert PaymentEvent.objects.filter(payment=payment).count() == events_before


@pytest.mark.parametrize("status", S.values)
def test_repeating_the_current_status_is_a_no_op_without_event(status):
    payment = payment_in(status)
    events_before = PaymentEvent.objects.filter(payment=payment).count()

    changed = services.payment_transition(payment=payment, to_status=status, reason="again")

    assert changed is False
    assert PaymentEvent.objects.filter(payment=payment).count() == events_before


@pytest.mark.parametrize("pair", sorted(states.OPERATOR_TRANSITIONS))
def test_operator_only_transitions_are_refused_without_an_operator(pair):
    from_status, to_status = pair
    payment = payment_in(from_status)

    with pytest.raises(InvalidTransition):
        services.payment_transition(payment=payment, to_status=to_status, reason="automatic")

    payment.refresh_from_db()
    assert payment.status == from_status


def test_marking_sets_the_marked_sub_status():
    payment = payment_in(S.EXPIRED)

    services.payment_mark(payment=payment, to_status=S.SETTLED)

    assert (payment.status, payment.sub_status) == (S.SETTLED, "marked")
    assert payment.settled_at is not None


def test_creation_writes_the_first_event_with_the_quote():
    payment = make_payment(amount="10.00")

    events = list(PaymentEvent.objects.filter(payment=payment))

    assert [(e.sequence, e.type) for e in events] == [(1, PaymentEvent.Type.CREATED)]
    assert events[0].data["quote"]["source"] == "fallback"
    assert events[0].data["payment"]["status"] == S.PENDING
