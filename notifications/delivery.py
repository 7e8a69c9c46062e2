"""Webhook delivery: the deliveries an event makes, their claims, sending them over HTTP
(``notifications.sender``) and recording the attempts. Events come from the outbox
(``notifications.outbox``), endpoints from ``notifications.endpoints``."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from prometheus_client import Counter, Histogram

from cryptopay.bulk_writes import array_literal, rows_insert, rows_update
from notifications import endpoint_secrets
from notifications.models import (
    PRIORITY_RANK,
    Event,
    Priority,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from notifications.sender import (
    AttemptResult,
    Claim,
    Outcome,
    Target,
    deliver_now,
    retryable,
)
from resilience import clock

logger = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = Counter(
    "cryptopay_webhook_delivery_attempts",
    "Live webhook delivery attempts by what became of the delivery: succeeded, failed (final), "
    "retrying (scheduled again), gave_up (retry window over).",
    ["outcome"],
)
DELIVERY_OUTCOMES = ("succeeded", "failed", "retrying", "gave_up")
DELIVERY_SECONDS = Histogram(
    "cryptopay_webhook_delivery_seconds",
    "Time from sending a webhook request to its answer (or its failure), per attempt.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def signing_secrets(endpoint: WebhookEndpoint) -> list[str]:
    """The secrets to sign with; raises endpoint_secrets.SecretUndecryptable when the current
    one is unreadable. An unreadable previous secret is left out: the new one (rotated in after a
    key was lost) is what the receiver is moving to, and it must not wait out the overlap."""
    keys = [endpoint_secrets.decrypt(endpoint.secret_encrypted)]
    if (
        endpoint.previous_secret_encrypted
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > clock.now()
        and endpoint_secrets.readable(endpoint.previous_secret_encrypted)
    ):
        keys.append(endpoint_secrets.decrypt(endpoint.previous_secret_encrypted))
    return keys


# --- deliveries ---------------------------------------------------------------------------------
#
# A delivery is attempted only by the sender holding its claim (``claim``, ``claimed_until``):
# claimed in a compare-and-set (rows locked with SKIP LOCKED, so two claimers never both win),
# recorded only with the holder's token. The dispatcher claims the deliveries it creates in the
# transaction that creates them; the sweep claims due ones, High first. A claim that outlives its
# holder (a killed dispatcher) is taken over once its lease has passed: the only way one attempt
# is POSTed twice, with the same Webhook-Id.


def endpoints_for(*, events: list[Event]) -> dict[int, list[WebhookEndpoint]]:
    """The enabled endpoints that want each event: the owner's endpoints of the event's mode
    (system events, the same in both modes: every endpoint that asks)."""
    owners = {event.owner for event in events if event.owner}
    system_types = {event.type for event in events if not event.owner}
    # Only the owners' endpoints, and those asking for one of the batch's system events by name:
    # every endpoint with a type filter, fetched for each batch, grew with the merchants.
    wanted_by = models.Q(owner__in=owners) if owners else models.Q(pk__in=[])
    if system_types and transaction.get_connection().vendor != "postgresql":
        wanted_by |= ~models.Q(event_types=[])  # no JSON containment lookup elsewhere
    elif system_types:
        for event_type in sorted(system_types):
            wanted_by |= models.Q(event_types__contains=[event_type])
    return endpoints_matching(
        events=events, candidates=list(WebhookEndpoint.objects.filter(wanted_by, enabled=True))
    )


def endpoints_matching(
    *, events: list[Event], candidates: list[WebhookEndpoint]
) -> dict[int, list[WebhookEndpoint]]:
    """Of ``candidates`` (enabled endpoints, at least those that want one of the events), the
    ones that want each event (see ``endpoints_for``)."""
    wanted: dict[int, list[WebhookEndpoint]] = {}
    for event in events:
        wanted[event.pk] = [
            endpoint
            for endpoint in candidates
            if endpoint.wants(event.type)
            and (
                (endpoint.owner, endpoint.livemode) == (event.owner, event.livemode)
                if event.owner
                else event.type in endpoint.event_types
            )
        ]
    return wanted


def _deliveries_insert(
    events: list[Event], wanted: dict[int, list[WebhookEndpoint]], *, now: datetime
) -> None:
    """Unclaimed deliveries due now; those that exist already stay as they are."""
    WebhookDelivery.objects.bulk_create(
        _deliveries_new(events, wanted, now=now), ignore_conflicts=True, batch_size=1000
    )


def _deliveries_new(
    events: list[Event], wanted: dict[int, list[WebhookEndpoint]], *, now: datetime
) -> list[WebhookDelivery]:
    """One delivery (not saved) per event and endpoint that wants it, due now."""
    return [
        WebhookDelivery(
            endpoint=endpoint,
            event=event,
            next_attempt_at=now,
            created_at=now,
            priority=PRIORITY_RANK[event.priority],
        )
        for event in events
        for endpoint in wanted[event.pk]
    ]


def deliveries_create(*, event: Event) -> list[WebhookDelivery]:
    """One unclaimed delivery per interested endpoint, due now (the sweep sends it); idempotent."""
    _deliveries_insert([event], endpoints_for(events=[event]), now=clock.now())
    return list(WebhookDelivery.objects.filter(event=event, status=WebhookDelivery.Status.PENDING))


def deliveries_claim_new(*, events: list[Event]) -> list[Claim]:
    """Create the events' deliveries and claim them for the caller, in one transaction: nobody
    else can see them before they are claimed. A re-dispatched event (its dispatcher died) claims
    again only deliveries never attempted and not held by a live claim."""
    if not events:
        return []
    now = clock.now()
    wanted = endpoints_for(events=events)
    # No savepoint inside the dispatcher's transaction: two round trips per batch saved.
    with transaction.atomic(savepoint=False):
        if transaction.get_connection().vendor == "postgresql":
            inserted = _deliveries_insert_claimed(events, wanted, now=now)
            return deliveries_claims_complete(events=events, wanted=wanted, inserted=inserted)
        _deliveries_insert(events, wanted, now=now)
        by_id = {event.pk: event for event in events}
        claims = _claim(_unattempted(by_id, now=now), now=now)
    return _claims(claims, events=by_id, endpoints=_endpoints_by_id(wanted))


def deliveries_claims_complete(
    *,
    events: list[Event],
    wanted: dict[int, list[WebhookEndpoint]],
    inserted: list[tuple],
) -> list[Claim]:
    """The claims of the deliveries ``claimed_insert_statement`` inserted or claimed
    (``claimed_rows``). No database work: the dispatcher's transaction may have ended."""
    by_id = {event.pk: event for event in events}
    return _claims(list(inserted), events=by_id, endpoints=_endpoints_by_id(wanted))


def _endpoints_by_id(wanted: dict[int, list[WebhookEndpoint]]) -> dict[int, WebhookEndpoint]:
    return {endpoint.pk: endpoint for targets in wanted.values() for endpoint in targets}


def _unattempted(event_ids: Iterable[int], *, now: datetime) -> models.QuerySet:
    """The events' deliveries never attempted and held by no live claim."""
    return WebhookDelivery.objects.filter(
        models.Q(claimed_until__isnull=True) | models.Q(claimed_until__lte=now),
        event_id__in=event_ids,
        status=WebhookDelivery.Status.PENDING,
        attempts=0,
    )


def _deliveries_insert_claimed(
    events: list[Event], wanted: dict[int, list[WebhookEndpoint]], *, now: datetime
) -> list[tuple]:
    """Insert the deliveries already claimed (token 1), in one ``INSERT … ON CONFLICT … RETURNING``
    instead of an insert, a locking select and an update; a delivery that already exists is
    claimed by it where ``_unattempted`` would, else left as it is and not returned
    (``claimed_insert_statement``). Rows as ``_claim`` returns them. Only the columns
    that differ between rows are sent, as arrays (no model instances: their per-field
    preparation cost more than the database spent on the rows)."""
    statement = claimed_insert_statement(events, wanted, now=now)
    if statement is None:
        return []
    sql, params, until = statement
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(sql, params)
        returned = cursor.fetchall()
    return claimed_rows(returned, until=until)


def claimed_insert_statement(
    events: list[Event], wanted: dict[int, list[WebhookEndpoint]], *, now: datetime
) -> tuple[str, list, datetime] | None:
    """The ``INSERT … RETURNING`` of ``_deliveries_insert_claimed``, its parameters and the
    claims' lease end; None when no endpoint wants any of the events. For a caller that sends it
    along with other statements (the dispatcher), then reads its rows with ``claimed_rows``.

    A delivery that exists already (an event re-dispatched after its dispatcher died, or one
    ``deliveries_create`` made) is claimed by the same statement if it was never attempted and
    no live claim holds it (``_unattempted``), else left as it is and not returned: no second
    statement for a case that is rare, and none after it in the dispatcher's transaction."""
    until = now + settings.WEBHOOK_CLAIM
    pairs = [
        (endpoint.pk, event.pk, PRIORITY_RANK[event.priority])
        for event in events
        for endpoint in wanted[event.pk]
    ]
    if not pairs:
        return None
    endpoints, event_ids, ranks = (array_literal(column) for column in zip(*pairs, strict=True))
    table = WebhookDelivery._meta.db_table
    # The table name comes from the model's metadata, values are parameters. A conflicting row
    # is locked and claimed only where it matches ``_unattempted``; its priority stays its own.
    sql = f"""
        INSERT INTO {table} AS d (endpoint_id, event_id, priority, status,
            attempts, next_attempt_at, last_error, created_at, claim, claimed_until)
        SELECT v.endpoint, v.event, v.rank, %s, 0, %s, '', %s, 1, %s
        FROM unnest(CAST(%s AS bigint[]), CAST(%s AS bigint[]), CAST(%s AS smallint[]))
            AS v(endpoint, event, rank)
        ON CONFLICT (endpoint_id, event_id) DO UPDATE
            SET claim = d.claim + 1, claimed_until = excluded.claimed_until
            WHERE d.status = excluded.status AND d.attempts = 0
                AND (d.claimed_until IS NULL OR d.claimed_until <= excluded.created_at)
        RETURNING d.id, d.claim, d.endpoint_id, d.event_id, d.priority
    """  # noqa: S608
    params = [WebhookDelivery.Status.PENDING, now, now, until, endpoints, event_ids, ranks]
    return sql, params, until


def claimed_rows(returned: list[tuple], *, until: datetime) -> list[tuple]:
    """The rows ``claimed_insert_statement`` returned, as ``_claim`` returns them."""
    return [
        (pk, token, endpoint, event, rank, until) for pk, token, endpoint, event, rank in returned
    ]


def deliveries_claim_due(*, limit: int) -> list[Claim]:
    """Claim up to ``limit`` due deliveries, High before Normal before Low, then by due time."""
    now = clock.now()
    with transaction.atomic():
        due = (
            WebhookDelivery.objects.filter(
                status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
            )
            .filter(models.Q(claimed_until__isnull=True) | models.Q(claimed_until__lte=now))
            .order_by("priority", "next_attempt_at")[:limit]
        )
        claims = _claim(due, now=now)
    return _claims(claims)


def delivery_claim(*, delivery_id: int) -> Claim | None:
    """Claim one delivery whatever its schedule, unless another sender holds it."""
    now = clock.now()
    with transaction.atomic():
        one = WebhookDelivery.objects.filter(
            pk=delivery_id, status=WebhookDelivery.Status.PENDING
        ).filter(models.Q(claimed_until__isnull=True) | models.Q(claimed_until__lte=now))
        claims = _claim(one, now=now)
    return next(iter(_claims(claims)), None)


def _claim(candidates: models.QuerySet, *, now: datetime) -> list[tuple]:
    """The compare-and-set, inside the caller's transaction: lock the candidates still free
    (SKIP LOCKED: rows another claimer holds are its), then take them. Returns (delivery, token,
    endpoint, event, priority, lease end) rows."""
    rows = list(
        candidates.select_for_update(skip_locked=True).values_list(
            "pk", "claim", "endpoint_id", "event_id", "priority"
        )
    )
    if rows:
        WebhookDelivery.objects.filter(pk__in=[row[0] for row in rows]).update(
            claim=models.F("claim") + 1, claimed_until=now + settings.WEBHOOK_CLAIM
        )
    until = now + settings.WEBHOOK_CLAIM
    return [
        (pk, token + 1, endpoint, event, rank, until) for pk, token, endpoint, event, rank in rows
    ]


def _claims(
    rows: list[tuple],
    *,
    events: dict[int, Event] | None = None,
    endpoints: dict[int, WebhookEndpoint] | None = None,
) -> list[Claim]:
    if not rows:
        return []
    if events is None:
        events = Event.objects.in_bulk({row[3] for row in rows})
    if endpoints is None:
        endpoints = WebhookEndpoint.objects.in_bulk({row[2] for row in rows})
    targets: dict[int, Target] = {}
    bodies: dict[int, bytes] = {}
    claims = []
    high_retries = settings.NOTIFY_HIGH_PRIORITY_RETRIES
    for pk, token, endpoint_id, event_id, rank, until in rows:
        event, endpoint = events[event_id], endpoints[endpoint_id]
        if endpoint_id not in targets:
            try:
                keys = tuple(signing_secrets(endpoint))
            except endpoint_secrets.SecretUndecryptable as exc:
                # Not the receiver's fault and no retry helps: the attempt fails for an operator
                # (admin flag, /health/external webhooks:secrets), who redelivers once fixed.
                logger.error(
                    "webhook endpoint %s (merchant %s): %s; its deliveries fail",
                    endpoint.public_id, endpoint.owner, exc,
                )  # fmt: skip
                keys = ()
            targets[endpoint_id] = Target(endpoint.public_id, endpoint.url, keys, endpoint.enabled)
        if event_id not in bodies:
            bodies[event_id] = _json(event.envelope())
        claims.append(
            Claim(
                delivery_id=pk,
                token=token,
                until=until,
                priority=rank,
                target=targets[endpoint_id],
                webhook_id=event.public_id,
                body=bodies[event_id],
                immediate_retries=high_retries if event.priority == Priority.HIGH else 0,
            )
        )
    return claims


def backoff(attempts: int) -> timedelta:
    """Exponential with full jitter: initial * 2^(attempts-1), capped."""
    base = settings.WEBHOOK_RETRY_INITIAL.total_seconds() * (2 ** max(0, attempts - 1))
    capped = min(base, settings.WEBHOOK_RETRY_MAX.total_seconds())
    return timedelta(seconds=capped / 2 + random.uniform(0, capped / 2))  # noqa: S311 - jitter


def attempts_record(*, outcomes: list[Outcome]) -> None:
    """Log every attempt and move each delivery on, in one transaction for the lot: a success
    finishes it, a final answer fails it, a retryable one schedules the next try (or gives up
    after WEBHOOK_RETRY_FOR). Rows are re-read under lock: a success is never overwritten, and a
    sender whose claim was taken over (its lease passed) logs its attempts but decides nothing."""
    outcomes = [outcome for outcome in outcomes if outcome.attempts or outcome.released]
    if not outcomes:
        return
    if transaction.get_connection().vendor == "postgresql":
        simple = [o for o in outcomes if len(o.attempts) == 1 and o.attempts[0].ok]
        # A delivery twice in one lot (claimed again after a lease ran out): the general way.
        seen: set[int] = set()
        twice: set[int] = set()
        for outcome in outcomes:
            (twice if outcome.claim.delivery_id in seen else seen).add(outcome.claim.delivery_id)
        simple = [o for o in simple if not o.released and o.claim.delivery_id not in twice]
        given_back = [
            o
            for o in outcomes
            if o.released and not o.attempts and o.claim.delivery_id not in twice
        ]
        done = _successes_record(simple) | _releases_record(given_back)
        outcomes = [outcome for outcome in outcomes if outcome.claim.delivery_id not in done]
        if not outcomes:
            return
    now = clock.now()
    logged: list[tuple[Outcome, WebhookDelivery]] = []
    with transaction.atomic():
        current = (
            WebhookDelivery.objects.select_for_update(of=("self",))
            .select_related("event", "endpoint")
            # Every field written below: a deferred one would be fetched row by row.
            .only(*_RECORDED, "claim", "event__created_at", "endpoint__livemode")
            .in_bulk([outcome.claim.delivery_id for outcome in outcomes])
        )
        attempts = []
        for outcome in outcomes:
            delivery = current.get(outcome.claim.delivery_id)
            if delivery is None:
                continue  # its event was deleted meanwhile
            holder = delivery.claim == outcome.claim.token
            if holder:
                delivery.claimed_until = None
            for result in outcome.attempts:
                attempts.append(
                    WebhookAttempt(
                        delivery=delivery,
                        attempted_at=result.at or now,
                        status_code=result.status_code,
                        latency_ms=result.latency_ms,
                        error=result.error,
                    )
                )
                delivery.attempts += 1
                delivery.last_status_code = result.status_code
                delivery.last_error = result.error
                delivery.last_latency_ms = result.latency_ms
            if outcome.attempts and holder and delivery.status == WebhookDelivery.Status.PENDING:
                _advance(
                    delivery, outcome.attempts[-1], now=now, created_at=delivery.event.created_at
                )
            logged.append((outcome, delivery))
        rows_insert(attempts)
        rows_update([delivery for _, delivery in logged], list(_RECORDED))
    for outcome, delivery in logged:
        if not outcome.attempts:
            continue
        if delivery.endpoint.livemode:  # test endpoints stay out of the operators' figures
            for result in outcome.attempts:
                if result.latency_ms is not None:
                    DELIVERY_SECONDS.observe(result.latency_ms / 1000)
            DELIVERY_ATTEMPTS.labels(
                "retrying" if delivery.status == WebhookDelivery.Status.PENDING else delivery.status
            ).inc(len(outcome.attempts))
        if delivery.status != WebhookDelivery.Status.SUCCEEDED:
            last = outcome.attempts[-1]
            logger.info(
                "webhook %s to %s: attempt %d %s", outcome.claim.webhook_id,
                outcome.claim.target.public_id, delivery.attempts, last.status_code or last.error,
            )  # fmt: skip


_RECORDED = (
    "attempts",
    "last_status_code",
    "last_error",
    "last_latency_ms",
    "status",
    "next_attempt_at",
    "delivered_at",
    "claimed_until",
)


def _successes_record(outcomes: list[Outcome]) -> set[int]:
    """The common case in one statement (PostgreSQL): one attempt, a 2xx, by the claim's holder
    of a pending delivery. The delivery succeeds and the attempt is logged, for every row whose
    claim and status still match (a compare-and-set under the row lock); returns those rows'
    ids. The others (claim taken over, already finished) go the general way, which also logs
    them. Columns built straight from the outcomes, no model instances: the recorder spent most
    of its time on the ORM."""
    if not outcomes:
        return set()
    delivery, attempt = WebhookDelivery._meta.db_table, WebhookAttempt._meta.db_table
    endpoint = WebhookEndpoint._meta.db_table
    now = clock.now()
    outcomes = sorted(outcomes, key=lambda outcome: outcome.claim.delivery_id)
    columns = [
        array_literal([outcome.claim.delivery_id for outcome in outcomes]),
        array_literal([outcome.claim.token for outcome in outcomes]),
        array_literal([outcome.attempts[0].at or now for outcome in outcomes]),
        array_literal([outcome.attempts[0].status_code for outcome in outcomes]),
        array_literal([outcome.attempts[0].latency_ms for outcome in outcomes]),
    ]
    # Table names come from the models' metadata, values are parameters. The compare-and-set is
    # ``held``: each delivery looked up by key and locked, in id order (two recorders never wait
    # for each other in a cycle), and kept if its claim and status still match: one lookup per
    # outcome as in ``cryptopay.bulk_writes.rows_by_key`` (with ``d.status = 'pending'`` beside
    # the ids, the planner read the whole partial index of pending deliveries, a cost that grew
    # with the backlog of a failing endpoint rather than with the batch). The update and the log
    # take exactly those rows, locked, with their values, so neither repeats the condition nor
    # joins one CTE to another (the planner guesses a CTE's rows, 1 or 2 whatever its size, and
    # picked nested loops over both); the ids again give the update its primary-key path.
    sql = f"""
        WITH v AS (
            SELECT * FROM unnest(CAST(%s AS bigint[]), CAST(%s AS integer[]),
                                 CAST(%s AS timestamptz[]), CAST(%s AS integer[]),
                                 CAST(%s AS integer[])) AS v(id, token, at, code, latency)
        ), held AS MATERIALIZED (
            SELECT v.id, v.at, v.code, v.latency, d.endpoint_id FROM v CROSS JOIN LATERAL (
                SELECT claim, status, endpoint_id FROM {delivery} WHERE id = v.id
                OFFSET 0 FOR UPDATE
            ) AS d
            WHERE d.claim = v.token AND d.status = %s
        ), done AS (
            UPDATE {delivery} AS d SET status = %s, attempts = d.attempts + 1,
                last_status_code = held.code, last_error = '', last_latency_ms = held.latency,
                next_attempt_at = NULL, delivered_at = held.at, claimed_until = NULL
            FROM held WHERE d.id = ANY(CAST(%s AS bigint[])) AND d.id = held.id
        ), logged AS (
            INSERT INTO {attempt} (delivery_id, attempted_at, status_code, latency_ms, error)
            SELECT id, at, code, latency, '' FROM held
        )
        SELECT held.id, e.livemode FROM held JOIN {endpoint} AS e ON e.id = held.endpoint_id
    """  # noqa: S608
    params = [
        *columns,
        WebhookDelivery.Status.PENDING,
        WebhookDelivery.Status.SUCCEEDED,
        columns[0],
    ]
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    done = {delivery_id for delivery_id, _ in rows}
    # Test endpoints stay out of the operators' figures.
    live = {delivery_id for delivery_id, livemode in rows if livemode}
    DELIVERY_ATTEMPTS.labels("succeeded").inc(len(live))
    for outcome in outcomes:
        latency_ms = outcome.attempts[0].latency_ms
        if outcome.claim.delivery_id in live and latency_ms is not None:
            DELIVERY_SECONDS.observe(latency_ms / 1000)
    return done


def _releases_record(outcomes: list[Outcome]) -> set[int]:
    """Deliveries given back unattempted (a lane over its bound lets a burst's excess go to the
    retry sweep) in one statement (PostgreSQL): each one's claim is cleared where this claim
    still holds it (a compare-and-set under the row lock, in id order as ``_successes_record``
    takes them); one whose claim was taken over is left to its new holder. Returns every
    outcome's delivery id: none needs anything else. The general way read and wrote back every
    recorded field of each, with its event and endpoint: a burst's thousands of them held the
    recorder's thread for longer than the deliveries it sent."""
    if not outcomes:
        return set()
    delivery = WebhookDelivery._meta.db_table
    outcomes = sorted(outcomes, key=lambda outcome: outcome.claim.delivery_id)
    ids = array_literal([outcome.claim.delivery_id for outcome in outcomes])
    tokens = array_literal([outcome.claim.token for outcome in outcomes])
    # The table name comes from the model's metadata, values are parameters.
    sql = f"""
        WITH v AS (
            SELECT * FROM unnest(CAST(%s AS bigint[]), CAST(%s AS integer[])) AS v(id, token)
        ), held AS MATERIALIZED (
            SELECT v.id FROM v CROSS JOIN LATERAL (
                SELECT claim FROM {delivery} WHERE id = v.id OFFSET 0 FOR UPDATE
            ) AS d
            WHERE d.claim = v.token
        )
        UPDATE {delivery} AS d SET claimed_until = NULL
        FROM held WHERE d.id = ANY(CAST(%s AS bigint[])) AND d.id = held.id
    """  # noqa: S608
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(sql, [ids, tokens, ids])
    return {outcome.claim.delivery_id for outcome in outcomes}


def _advance(
    delivery: WebhookDelivery, last: AttemptResult, *, now: datetime, created_at: datetime
) -> None:
    if last.ok:
        delivery.status = WebhookDelivery.Status.SUCCEEDED
        delivery.next_attempt_at = None
        delivery.delivered_at = last.at or now
    elif last.final or not retryable(last.status_code):
        delivery.status = WebhookDelivery.Status.FAILED
        delivery.next_attempt_at = None
    else:
        next_at = now + backoff(delivery.attempts)
        if next_at > created_at + settings.WEBHOOK_RETRY_FOR:
            delivery.status = WebhookDelivery.Status.GAVE_UP
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = next_at


def claims_send(*, claims: list[Claim]) -> None:
    """Send claimed deliveries on this thread (lanes per endpoint, side by side) and record what
    happened. For the sweep, redelivery and embedded mode; the dispatcher streams instead."""
    disabled = [
        Outcome(claim, [AttemptResult(None, "endpoint disabled", 0, clock.now(), final=True)])
        for claim in claims
        if not claim.target.enabled
    ]
    outcomes = deliver_now(
        [claim for claim in claims if claim.target.enabled],
    )
    attempts_record(outcomes=disabled + outcomes)


def webhook_deliver(*, delivery_id: int) -> str:
    """Attempt one delivery now, unless another sender holds it; returns its status."""
    claim = delivery_claim(delivery_id=delivery_id)
    if claim is not None:
        claims_send(claims=[claim])
    return WebhookDelivery.objects.values_list("status", flat=True).get(pk=delivery_id)


def webhooks_deliver_due(*, limit: int = 64, budget_seconds: float = 0.0) -> int:
    """Attempt the deliveries whose retry time has come, High first, ``limit`` at a time; returns
    how many. Each endpoint gets its own lane, so a dead endpoint delays only itself, and each
    delivery keeps its own schedule.

    Within ``budget_seconds``, a full batch is followed by the next: a backlog of due deliveries
    (a burst a dispatcher's lane gave back, an endpoint answering again after an outage) then
    leaves as fast as the endpoints answer. One batch per sweep sent 64 every 5 s: the 4,000 a
    lane gave back in a 20,000-event burst to one healthy endpoint arrived over five minutes."""
    sent = 0
    # The injectable clock, as the claims' leases use: the budget is tested without real waits.
    started = clock.now()
    while True:
        claims = deliveries_claim_due(limit=limit)
        claims_send(claims=claims)
        sent += len(claims)
        spent = (clock.now() - started).total_seconds()
        if len(claims) < limit or spent >= budget_seconds:
            return sent


def webhook_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Manual redelivery: back to pending and attempted now (also after success or giving up)."""
    with transaction.atomic():
        WebhookDelivery.objects.select_for_update().filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.PENDING, next_attempt_at=clock.now()
        )
    webhook_deliver(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    return delivery


# One encoder for every body: json.dumps with an encoder class or separators builds a new one per
# call. Encoders keep no state between calls.
_BODY_ENCODER = DjangoJSONEncoder(separators=(",", ":"))


def _json(envelope: dict[str, Any]) -> bytes:
    return _BODY_ENCODER.encode(envelope).encode()
