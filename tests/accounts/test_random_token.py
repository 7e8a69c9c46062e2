"""Random ids and secrets (``accounts.models.random_token``): the length asked for, letters and
digits only, every letter equally likely."""

from __future__ import annotations

import string
from collections import Counter

from accounts.models import random_token
from notifications.models import new_event_id
from payments.models import Payment

ALPHABET = string.ascii_letters + string.digits


def test_a_token_has_the_length_asked_for_in_letters_and_digits_only():
    for length in (0, 1, 20, 24, 32, 300):
        token = random_token(length)

        assert len(token) == length
        assert set(token) <= set(ALPHABET)


def test_every_letter_is_about_equally_likely():
    # Given 62,000 letters: each of the 62 expected 1,000 times (standard deviation about 31).
    counts = Counter(random_token(62_000))

    # Then every letter shows up, none far from its share: a byte taken modulo 62 without
    # dropping 248..255 makes the first eight letters about 3 % likelier (1,032 vs 998 on
    # average), which a single run cannot tell apart reliably; this catches a broken draw (a
    # letter missing or twice as likely), while the mapping itself is stated in the code.
    assert set(counts) == set(ALPHABET)
    assert min(counts.values()) > 800
    assert max(counts.values()) < 1_200


def test_ids_of_payments_and_events_use_it():
    assert len(Payment().public_id) == len("pay_") + 24
    assert new_event_id().startswith("evt_")
    assert len(set(new_event_id() for _ in range(1_000))) == 1_000
