"""The notification dispatcher: High-priority latency under a Low flood, and throughput.

    .venv/bin/python -m bench.notifications [--flood 10000] [--high 150] [--events 3000]
    .venv/bin/python -m bench.notifications --only deliveries --repeat 3   # section 3 alone

Runs against PostgreSQL and Redis (DATABASE_URL / REDIS_URL, defaulting to the test services) in a
scratch database ``cryptopay_notify_<pid>`` created for the run and dropped at the end, with Redis
keys under a per-run prefix (queues, breakers, cache) deleted at the end. The dispatcher runs in a
thread of this process (``Dispatcher.run``, as ``manage.py run_dispatcher`` does); webhooks go to
a real HTTP receiver on 127.0.0.1 (testing/receivers.py) that answers 200 at once.

1. Latency: ``--flood`` Low events (exchange-rate updates: no webhook, no browser group) are
   queued first; then, while the dispatcher drains them, a High event (payment.status_changed to
   a merchant with one endpoint) is published every ``--gap`` seconds. Latency is publish (before
   the committing transaction) to the receiver's arrival time; only High events published while
   Low events were still queued count. Run once per batching policy: adaptive (NOTIFY_BATCHING's
   levels) and fixed ones (50 / 1 s is its "normal" level held constant; 200 / 0.1 s and 10 / 5 s
   its other two).
2. Throughput: ``--events`` events already queued, drained by an adaptive dispatcher, in events/s:
   system events (no fan-out at all), merchant events with no webhook endpoint (browser groups
   through the channel layer only), and merchant events with one fast receiver.

3. Webhook deliveries/s, side by side on this machine: ``--deliveries`` events (payment.created,
   one endpoint each) to one fast local receiver (aiohttp, its own process, keep-alive), sent by
   the real ``manage.py run_dispatcher`` (1 process, then 2), against a minimal aiohttp sender
   (50 concurrent, the same signed bodies, the same receiver). Both are warm when their clock
   starts: the dispatchers have sent and recorded ``WARM_UP`` deliveries, and the minimal sender
   has made as many POSTs on its session (connections open, pools filled). The events are
   committed first and the dispatchers left idle; the clock runs from queueing all ids to the
   receiver's last arrival. Duplicates at the receiver are counted too (must be 0), and so are deliveries a lane
   let go to the retry sweep (a burst it would take too long to send, over
   CRYPTOPAY_WEBHOOK_ENDPOINT_BACKLOG): they are not waited for, since no sweep runs here. CPU
   per delivery: the dispatcher processes' user+sys time (``/proc/PID/stat``) from queueing to
   the last recorded outcome, divided by the deliveries, and the minimal sender's (this process, while it sends):
   a figure the other load on a shared machine hardly moves, unlike deliveries/s. Machine: every
   process's CPU (``/proc/stat``: the receiver, PostgreSQL and Redis too) per delivery over the
   same span, and how busy the cores were: a sender well under 100 % is limited by its own
   pipeline (round trips, the GIL), not by the machine.
   ``--repeat N`` runs the minimal sender and the dispatchers N times, alternating.

Last, a ``RESULT {json}`` line for bench/report.py (bench/results.py).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.api_throughput import cpu_seconds_of, machine_busy_seconds
from bench.results import emit, figure
from testing.scratch import scratch_environment

MERCHANT = "mer_bench"


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# --- helpers (Django imported lazily: settings come from scratch_environment) --------------------------


def queues_client():  # -> redis.Redis
    from notifications import queues

    client = queues.client()
    assert client is not None, "the bench needs Redis (REDIS_URL)"
    return client


def clear_queues() -> None:
    from notifications import queues

    queues_client().delete(*(queues.key(priority) for priority in queues.ORDER))


def fixed_batching(interval: float, size: int):
    from notifications.dispatcher import AdaptiveBatching, Batching

    class FixedBatching(AdaptiveBatching):
        def current(self) -> Batching:
            return Batching(level=f"fixed {size}/{interval:g}s", interval=interval, size=size)

    return FixedBatching(window=1)


class RunningDispatcher:
    """Dispatcher.run in a thread; counts batches per level."""

    def __init__(self, batching=None) -> None:
        from notifications.dispatcher import Dispatcher

        self.levels: Counter[str] = Counter()
        self.dispatcher = Dispatcher(batching=batching, on_batch=self._on_batch)
        self.thread = threading.Thread(target=self.dispatcher.run, daemon=True)

    def _on_batch(self, batching, size: int) -> None:
        self.levels[batching.level] += 1

    def __enter__(self) -> RunningDispatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from notifications import queues

        self.dispatcher.stop()
        queues.enqueue(event_id=0, priority="high")  # wakes a blocking pop; no such event
        self.thread.join(timeout=30)
        clear_queues()


def flood_low(count: int) -> list[int]:
    """``count`` queued Low events (rate updates), the fast way: one insert, pipelined pushes."""
    from django.utils import timezone

    from notifications import queues
    from notifications.models import Event, Priority

    now = timezone.now()
    events = Event.objects.bulk_create(
        [
            Event(
                owner="",
                type="exchange_rate.updated",
                priority=Priority.LOW,
                subject="BTC/USD",
                data={"pair": "BTC/USD", "rate": "97000.00", "n": n},
                created_at=now,
            )
            for n in range(count)
        ],
        batch_size=2000,
    )
    ids = [event.pk for event in events]
    pipe = queues_client().pipeline(transaction=False)
    for start in range(0, len(ids), 1000):
        pipe.rpush(queues.key("low"), *ids[start : start + 1000])
    pipe.execute()
    return ids


def publish(*, owner: str, type: str, n: int):
    from django.db import transaction

    from notifications.outbox import event_publish

    with transaction.atomic():
        return event_publish(
            owner=owner, type=type, subject=f"pay_bench{n:06d}", sequence=1, data={"n": n}
        )


def reset_events() -> None:
    from notifications.models import Event

    Event.objects.all().delete()  # deliveries and attempts cascade


# --- 1. latency ---------------------------------------------------------------------------------


def high_latency_under_flood(label: str, batching, receiver, *, flood: int, high: int, gap: float):
    from notifications import queues

    reset_events()
    clear_queues()
    flood_low(flood)
    sent: dict[str, float] = {}
    with RunningDispatcher(batching) as running:
        started = time.monotonic()
        n = 0
        while n < high:
            if n and queues.sizes()["low"] == 0:
                # The flood is over: later High events would not be "under" it. The first one is
                # always sent, so a policy that drains a small flood in one batch still has a figure.
                break
            at = time.monotonic()
            event = publish(owner=MERCHANT, type="payment.status_changed", n=n)
            sent[event.public_id] = at
            n += 1
            time.sleep(gap)
        deadline = time.monotonic() + 60
        while not set(sent) <= set(receiver.ids()) and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        low_left = queues.sizes()["low"]
    arrivals = {r.webhook_id: r.at for r in receiver.requests if r.webhook_id in sent}
    latencies = sorted((arrivals[i] - sent[i]) * 1000 for i in sent if i in arrivals)
    missing = len(sent) - len(latencies)
    return {
        "label": label,
        "count": len(latencies),
        "missing": missing,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": percentile(latencies, 0.99) if latencies else float("nan"),
        "max": latencies[-1] if latencies else float("nan"),
        "low_rate": (flood - low_left) / elapsed,
        "low_left": low_left,
        "levels": dict(running.levels),
    }


# --- 2. throughput ------------------------------------------------------------------------------


def throughput(label: str, *, events: int, kind: str) -> dict:
    from notifications import queues
    from notifications.models import Event

    reset_events()
    clear_queues()
    if kind == "system":
        flood_low(events)
    else:
        owner = MERCHANT if kind == "webhook" else "mer_nohooks"
        # Normal priority (payment.created): no immediate retries; queued on commit.
        for n in range(events):
            publish(owner=owner, type="payment.created", n=n)
    assert sum(queues.sizes().values()) == events
    with RunningDispatcher() as running:
        started = time.monotonic()
        deadline = started + 120
        while running.dispatcher.processed < events and time.monotonic() < deadline:
            time.sleep(0.005)
        took = time.monotonic() - started
    done = Event.objects.filter(dispatched_at__isnull=False).count()
    return {
        "label": label,
        "events": done,
        "seconds": took,
        "rate": done / took,
        "levels": dict(running.levels),
    }


# --- 3. webhook deliveries/s: the real dispatcher against a minimal sender -------------------------

FAST_OWNER = "mer_fast"
# Deliveries each sender makes before its clock starts (connections opened, pools filled, the
# endpoint's breaker read): a dispatcher runs for days, its first moments are not its throughput.
WARM_UP = 200


def merchant_events(owner: str, count: int) -> list[int]:
    """Committed, not queued: the dispatchers start on an idle queue."""
    from django.utils import timezone

    from notifications.models import Event, Priority

    now = timezone.now()
    events = Event.objects.bulk_create(
        [
            Event(
                owner=owner,
                type="payment.created",
                priority=Priority.NORMAL,
                subject=f"pay_fast{n:06d}",
                sequence=1,
                data={"n": n},
                created_at=now,
            )
            for n in range(count)
        ],
        batch_size=2000,
    )
    return [event.pk for event in events]


def dispatcher_processes(count: int) -> list:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    processes = []
    for _ in range(count):
        process = subprocess.Popen(  # noqa: S603 - our own manage.py
            [sys.executable, str(root / "manage.py"), "run_dispatcher"],
            cwd=root, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(process)
    for process in processes:
        assert process.stdout is not None  # stdout=PIPE
        assert process.stdout.readline().strip() == b"dispatcher running"
    return processes


def deliveries_settled() -> tuple[int, int]:
    """(deliveries succeeded, deliveries left pending and unclaimed: the sender let them go to
    the retry sweep, as a lane over its bound does with a burst it would take too long to send)."""
    from notifications.models import WebhookDelivery

    pending = WebhookDelivery.objects.filter(status="pending", claimed_until__isnull=True)
    return WebhookDelivery.objects.filter(status="succeeded").count(), pending.count()


def queue_ids(ids: list[int]) -> None:
    from notifications import queues

    pipe = queues_client().pipeline(transaction=False)
    for start in range(0, len(ids), 1000):
        pipe.rpush(queues.key("normal"), *ids[start : start + 1000])
    pipe.execute()


def dispatcher_deliveries(fast, *, events: int, processes: int) -> dict:
    reset_events()
    clear_queues()
    fast.reset()
    running = dispatcher_processes(processes)
    try:
        # Warm, as a dispatcher that has been running is: WARM_UP deliveries first, sent and
        # recorded before the clock starts.
        queue_ids(merchant_events(FAST_OWNER, WARM_UP))
        deadline = time.monotonic() + 60
        while sum(deliveries_settled()) < WARM_UP and time.monotonic() < deadline:
            time.sleep(0.02)
        warm = deliveries_settled()
        ids = merchant_events(FAST_OWNER, events)
        fast.reset()

        def settled() -> int:
            return sum(deliveries_settled()) - sum(warm)

        cpu_before = sum(cpu_seconds_of(process.pid) for process in running)
        busy_before = machine_busy_seconds()
        started = time.monotonic()
        queue_ids(ids)
        deadline = started + 120
        checked = started
        # Polls the count only: the full report grows with every id, and serializing it 50
        # times a second took CPU from the dispatchers that the minimal sender never lost.
        # Twice a second, whether the rest were left to the retry sweep (which this bench does
        # not run): then they will not come.
        while fast.received() < events and time.monotonic() < deadline:
            time.sleep(0.02)
            if time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if settled() >= events:
                    break
        report = fast.report()
        while settled() < events and time.monotonic() < deadline:
            time.sleep(0.02)
        shed = deliveries_settled()[1] - warm[1]
        recorded = time.monotonic() - started
        cpu = sum(cpu_seconds_of(process.pid) for process in running) - cpu_before
        busy = machine_busy_seconds() - busy_before
    finally:
        for process in running:
            process.terminate()
        for process in running:
            process.wait(timeout=60)
    counts = Counter(report["counts"])
    took = (report["last"] or time.monotonic()) - started
    return {
        "delivered": len(counts),
        "shed": shed,
        "duplicates": sum(counts.values()) - len(counts),
        "rate": len(counts) / took,
        "seconds": took,
        "recorded": recorded,
        "cpu_us": cpu / max(1, len(counts)) * 1e6,
        "machine_us": busy / max(1, len(counts)) * 1e6,
        "machine_busy": busy / recorded / (os.cpu_count() or 1),
    }


def minimal_sender(fast, *, events: int, concurrency: int = 50) -> dict:
    """The floor any dispatcher is measured against: signed POSTs, nothing else."""
    import asyncio

    import aiohttp

    from notifications import signing
    from notifications.delivery import _json
    from notifications.models import Event

    reset_events()
    fast.reset()
    ids = merchant_events(FAST_OWNER, WARM_UP + events)
    bodies = [
        (event.public_id, _json(event.envelope()))
        for event in Event.objects.filter(pk__in=ids).order_by("pk")
    ]

    async def send_all() -> None:
        async with aiohttp.ClientSession() as session:

            async def worker(work) -> None:
                for webhook_id, body in work:
                    header = signing.sign(
                        body=body, secrets=["whsec_bench"], timestamp=int(time.time())
                    )
                    headers = {
                        "Content-Type": "application/json",
                        "Webhook-Id": webhook_id,
                        signing.HEADER: header,
                    }
                    async with session.post(fast.url, data=body, headers=headers) as response:
                        await response.read()

            # Warm as the dispatchers are: WARM_UP sends on the same session first.
            warm_up = iter(bodies[:WARM_UP])
            await asyncio.gather(*(worker(warm_up) for _ in range(concurrency)))
            fast.reset()
            clock["started"], clock["cpu"] = time.monotonic(), time.process_time()
            clock["busy"] = machine_busy_seconds()
            work = iter(bodies[WARM_UP:])
            await asyncio.gather(*(worker(work) for _ in range(concurrency)))

    clock: dict[str, float] = {}
    asyncio.run(send_all())
    cpu = time.process_time() - clock["cpu"]
    busy = machine_busy_seconds() - clock["busy"]
    started = clock["started"]
    elapsed = time.monotonic() - started
    report = fast.report()
    took = report["last"] - started
    return {
        "cpu_us": cpu / max(1, len(report["counts"])) * 1e6,
        "machine_us": busy / max(1, len(report["counts"])) * 1e6,
        "machine_busy": busy / elapsed / (os.cpu_count() or 1),
        "delivered": len(report["counts"]),
        "rate": len(report["counts"]) / took,
        "seconds": took,
        "body_bytes": len(bodies[0][1]),
    }


def deliveries_section(args: argparse.Namespace, figures: list) -> None:
    from notifications.endpoints import webhook_endpoint_create
    from testing.fast_receiver import FastReceiver

    minimal = "deliveries, minimal aiohttp sender (50 concurrent)"
    senders = [minimal] + [f"deliveries, run_dispatcher x{n}" for n in (1, 2)]
    runs: dict[str, list[dict]] = {label: [] for label in senders}
    with FastReceiver() as fast:
        webhook_endpoint_create(owner=FAST_OWNER, url=fast.url)
        for round_ in range(args.repeat):
            load = " ".join(f"{n:.2f}" for n in os.getloadavg())
            floor = minimal_sender(fast, events=args.deliveries)
            runs[minimal].append(floor)
            if round_ == 0:
                print(
                    f"Webhook deliveries/s, {args.deliveries:,} events to one fast local receiver "
                    f"({floor['body_bytes']}-byte signed bodies); CPU: the sender's user+sys per delivery; "
                    "machine: every process's (receiver, PostgreSQL, Redis too) per delivery, "
                    "and how busy the cores were"
                )
                print(
                    f"  {'sender':40} {'deliveries/s':>12} {'seconds':>8} {'x minimal':>9} "
                    f"{'dups':>5} {'CPU µs':>7} {'machine µs':>10} {'busy':>5}"
                )
            print(f"  round {round_ + 1} of {args.repeat}, load average {load}")
            print(
                f"  {minimal[12:]:40} {floor['rate']:12.0f} {floor['seconds']:8.2f} {1:9.3f} "
                f"{'':5} {floor['cpu_us']:7.0f} {floor['machine_us']:10.0f} {floor['machine_busy']:5.0%}"
            )
            for processes in (1, 2):
                result = dispatcher_deliveries(fast, events=args.deliveries, processes=processes)
                label = senders[processes]
                runs[label].append(result)
                print(
                    f"  {label[12:]:40} {result['rate']:12.0f} {result['seconds']:8.2f} "
                    f"{result['rate'] / floor['rate']:9.3f} {result['duplicates']:5d} "
                    f"{result['cpu_us']:7.0f} {result['machine_us']:10.0f} {result['machine_busy']:5.0%}"
                    + (
                        f"  ONLY {result['delivered']}"
                        if result["delivered"] < args.deliveries
                        else ""
                    )
                    + (
                        f", {result['shed']} left to the retry sweep (the lane's bound)"
                        if result["shed"]
                        else ""
                    )
                    + f"  (all recorded after {result['recorded']:.2f} s)"
                )
    # Medians over the rounds: the runs alternate, so a burst of other load hits each sender.
    for label in senders:
        baseline = None if label == minimal else minimal
        rate = statistics.median(run["rate"] for run in runs[label])
        cpu = statistics.median(run["cpu_us"] for run in runs[label])
        figures.append(figure(label, rate, "1/s", baseline=baseline, better="higher"))
        figures.append(
            figure(
                f"{label}: CPU per delivery",
                cpu,
                "µs",
                baseline=None if baseline is None else f"{baseline}: CPU per delivery",
            )
        )
    if args.repeat > 1:
        print(f"  median of {args.repeat} rounds")
        for label in senders:
            rate = statistics.median(run["rate"] for run in runs[label])
            cpu = statistics.median(run["cpu_us"] for run in runs[label])
            floor_rate = statistics.median(run["rate"] for run in runs[minimal])
            print(
                f"  {label[12:]:40} {rate:12.0f} {'':8} {rate / floor_rate:9.3f} {'':5} {cpu:7.0f}"
            )
        # The figures above are ratios of medians; when the minimal sender's rate swings from
        # round to round, each round's own ratio (both senders under the same load) says more.
        for label in senders[1:]:
            paired = [
                run["rate"] / floor["rate"]
                for run, floor in zip(runs[label], runs[minimal], strict=True)
            ]
            print(
                f"  {label[12:]} / minimal, per round: "
                f"{', '.join(f'{ratio:.3f}' for ratio in paired)} "
                f"(median {statistics.median(paired):.3f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=10_000, help="queued Low events")
    parser.add_argument("--high", type=int, default=100, help="High events published at most")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between High events")
    parser.add_argument("--events", type=int, default=2000, help="events per throughput run")
    parser.add_argument(
        "--deliveries", type=int, default=2000, help="webhooks per deliveries/s run"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of the deliveries/s section, alternating"
    )
    parser.add_argument(
        "--only", choices=["deliveries"], help="run this section alone (the others are slow)"
    )
    args = parser.parse_args()

    # The receiver listens on 127.0.0.1.
    with scratch_environment("notify", {"CRYPTOPAY_WEBHOOK_ALLOW_PRIVATE": "1"}):
        run(args)


def run(args: argparse.Namespace) -> None:
    if args.only == "deliveries":
        figures: list = []
        deliveries_section(args, figures)
        emit("notifications", figures)
        return
    from notifications.endpoints import webhook_endpoint_create
    from testing.receivers import Receiver

    with Receiver() as receiver:
        webhook_endpoint_create(owner=MERCHANT, url=receiver.url)
        publish(owner=MERCHANT, type="payment.status_changed", n=999_999)  # warm-up, dispatched
        with RunningDispatcher():
            receiver.wait_for(lambda r: len(r.requests) >= 1, timeout=30)

        print(
            f"High-priority webhook latency (publish -> receiver), under a flood of {args.flood:,} "
            f"queued Low events; a High event every {args.gap * 1000:.0f} ms while Low remain"
        )
        print(
            f"  {'batching':22} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'Low/s':>6} {'Low left':>8}  batches per level"
        )
        policies = [
            ("adaptive", None),
            ("fixed 50 / 1 s", fixed_batching(1.0, 50)),
            ("fixed 200 / 0.1 s", fixed_batching(0.1, 200)),
            ("fixed 10 / 5 s", fixed_batching(5.0, 10)),
        ]
        figures = []
        # Baseline: the "normal" level held constant (no adaptation).
        fixed = "fixed 50 / 1 s"
        for label, batching in policies:
            result = high_latency_under_flood(
                label, batching, receiver, flood=args.flood, high=args.high, gap=args.gap
            )
            for key, metric, unit, better in (
                ("p50", "High p50", "ms", "lower"),
                ("p99", "High p99", "ms", "lower"),
                ("low_rate", "Low drained/s", "1/s", "higher"),
            ):
                figures.append(
                    figure(
                        f"under flood, {label}: {metric}",
                        result[key],
                        unit,
                        baseline=None if label == fixed else f"under flood, {fixed}: {metric}",
                        better=better,
                    )
                )
            levels = ", ".join(f"{k}: {v}" for k, v in sorted(result["levels"].items()))
            print(
                f"  {result['label']:22} {result['count']:4d} {result['p50']:8.1f} "
                f"{result['p99']:8.1f} {result['max']:8.1f} {result['low_rate']:6.0f} "
                f"{result['low_left']:8d}  {levels}"
                + (f"  MISSING {result['missing']}" if result["missing"] else "")
            )

        print(f"Dispatcher throughput, {args.events:,} events already queued, adaptive batching")
        print(f"  {'events':44} {'events/s':>9} {'seconds':>8}  batches per level")
        for label, kind in (
            ("system events, no fan-out", "system"),
            ("merchant events, no webhooks (channels only)", "nohooks"),
            ("merchant events, one fast receiver", "webhook"),
        ):
            result = throughput(label, events=args.events, kind=kind)
            # Baseline: system events, the dispatcher's own cost with no fan-out at all.
            figures.append(
                figure(
                    f"throughput, {label}",
                    result["rate"],
                    "events/s",
                    baseline=None if kind == "system" else "throughput, system events, no fan-out",
                    better="higher",
                )
            )
            levels = ", ".join(f"{k}: {v}" for k, v in sorted(result["levels"].items()))
            print(
                f"  {result['label']:44} {result['rate']:9.0f} {result['seconds']:8.2f}  {levels}"
                + (f"  ONLY {result['events']}" if result["events"] < args.events else "")
            )
        deliveries_section(args, figures)
        emit("notifications", figures)


if __name__ == "__main__":
    main()
