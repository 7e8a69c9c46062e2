"""Run every bench and write bench/RESULTS.md: the machine, and every figure next to its baseline.

    .venv/bin/python -m bench.report [--quick [--jobs N]] [--output bench/RESULTS.md]
                                     [--json PATH] [--only NAME,...] [--skip NAME,...]

``make bench`` runs it (``make bench BENCH_QUICK=1`` adds ``--quick``). Each bench in BENCHES runs
as its own process, one after the other (never two at once: they would measure each other), at its
report size (below) or, with ``--quick``, at smoke sizes that keep the whole run near two minutes
(tests/test_bench_report.py runs that inside ``make test``, three at a time with ``--jobs 3``, so
a bench that breaks or stops printing figures fails CI; quick figures are not representative).
Each bench gets a Redis prefix of its own under the run's.

Each bench prints its own human-readable output and, last, a ``RESULT {json}`` line
(bench/results.py) naming every figure, its unit, which way is better, and the figure of the same
run it is compared with (its baseline). The report divides each figure by its baseline and keeps
each bench's full output in the file too.

Services: DATABASE_URL / REDIS_URL as for the benches (defaults: the test services); the benches
that need PostgreSQL make and drop a scratch database of their own and use Redis prefixes of their
own. api_throughput.py needs wrk (``make wrk``, which ``make bench`` runs).
Exit status: 0 when every bench ran and produced figures, 1 otherwise (RESULTS.md is written
either way, with the failures in it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.results import baselines_of, parse

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BENCH_SECRET_KEY = "bench-only-secret-key-" + "x" * 40


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]  # the report size ("" = the script's defaults)
    quick: tuple[str, ...]  # smoke size
    what: str
    timeout: float = 900


BENCHES = (
    Bench(
        "payment_create",
        (),
        ("--count", "20"),
        "payment creation in one process, embedded SQLite: ORM insert vs service vs API",
    ),
    Bench(
        "breaker_overhead",
        (),
        ("--calls", "2000"),
        "circuit breaker per call (closed) vs bare and pybreaker; a quote per cache level",
    ),
    Bench(
        "idempotency_overhead",
        (),
        ("--rounds", "2", "--per-round", "5"),
        "POST /api/v1/payments in process with and without the idempotency layer",
    ),
    Bench(
        "live_create",
        (),
        ("--payments", "2000", "--rounds", "2", "--per-round", "3"),
        "a live create (the merchant's wallet key) among 600,000 payments: its address and "
        "gap-limit lookups as they were vs now; a whole live create vs a test-mode one",
    ),
    Bench(
        "chain_watch",
        (),
        tuple("--payments 20 --blocks 2 --per-block 5 --latency-samples 3 --idle-polls 3".split()),
        "EVM chain watcher on anvil: catch-up vs node calls alone, mined-to-status latency",
    ),
    Bench(
        "utxo_mempool",
        (),
        ("--mempool", "200", "--warm-polls", "3", "--baseline-runs", "2"),
        "UTXO watcher poll on Litecoin Core with 5,000 unrelated mempool txs: cold vs warm "
        "cache vs the old fetch-everything poll",
    ),
    Bench(
        "notifications",
        # Medians of three alternating rounds of the deliveries/s section: a minimal sender's
        # 2,000 deliveries take 0.2-0.3 s, and one round's ratio moved by nearly 2x between runs.
        ("--repeat", "3"),
        (
            "--flood",
            "1000",
            "--high",
            "5",
            "--gap",
            "0.02",
            "--events",
            "50",
            "--deliveries",
            "200",
        ),
        "dispatcher: High latency under a Low flood per batching policy, throughput",
    ),
    Bench(
        "ws_fanout",
        (),
        ("--quick",),
        "WebSocket fan-out of one status change to many buyers, daphne vs uvicorn vs the gateway",
    ),
    Bench(
        "api_throughput",
        (),
        ("--quick",),
        "payments created/s and p50/p99 over HTTP, with and without the resilience layers",
    ),
    Bench(
        "api_capacity",
        (),
        ("--quick",),
        "manage.py serve with 1 and 2 workers: payment creates and reads vs a minimal insert "
        "endpoint; SQL statements and Redis round trips per create; peak RSS per worker",
    ),
    Bench(
        "redis_hang",
        (),
        ("--quick",),
        "payment creates through manage.py serve while Redis hangs (black-holed), with the hold "
        "and without it, against the same server with Redis answering",
    ),
    Bench(
        "body_flood",
        (),
        ("--size-mib", "20"),
        "one 300 MiB multipart POST to /health/live: peak RSS and other clients' latency, "
        "daphne vs the gateway (manage.py serve)",
    ),
)

# The specification's claims with a figure in these benches: (claim, bench, with, without, goal in ms).
GOALS = (
    (
        "resilience overhead per request, HTTP, daphne, 1 client, p50",
        "api_throughput",
        "daphne with: p50, 1 client",
        "daphne without: p50, 1 client",
        5.0,
    ),
    (
        "resilience overhead per request, HTTP, daphne, 1 client, p99",
        "api_throughput",
        "daphne with: p99, 1 client",
        "daphne without: p99, 1 client",
        5.0,
    ),
    (
        "resilience overhead per request, HTTP, uvicorn, 1 client, p50",
        "api_throughput",
        "uvicorn with: p50, 1 client",
        "uvicorn without: p50, 1 client",
        5.0,
    ),
    (
        "resilience overhead per request, HTTP, uvicorn, 1 client, p99",
        "api_throughput",
        "uvicorn with: p99, 1 client",
        "uvicorn without: p99, 1 client",
        5.0,
    ),
    (
        "idempotency layer overhead, in process, p50",
        "idempotency_overhead",
        "with: p50",
        "without: p50",
        5.0,
    ),
    (
        "idempotency layer overhead, in process, p99",
        "idempotency_overhead",
        "with: p99",
        "without: p99",
        5.0,
    ),
    (
        "idempotency layer overhead, in process, p99 (the 2 ms goal)",
        "idempotency_overhead",
        "with: p99",
        "without: p99",
        2.0,
    ),
)


@dataclass
class Run:
    bench: Bench
    command: list[str]
    seconds: float = 0.0
    returncode: int | None = None
    output: str = ""
    figures: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.problems


# --- running ----------------------------------------------------------------------------------


def bench_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    env.setdefault("SECRET_KEY", BENCH_SECRET_KEY)
    # breaker_overhead.py sets Django up on these services without a scratch database: its cache
    # and breaker keys go under a prefix of this report run (deleted at the end).
    prefix = f"cryptopay-bench-report-{os.getpid()}"
    env["CRYPTOPAY_REDIS_PREFIX"] = prefix
    env["LOG_LEVEL"] = "WARNING"
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("DJANGO_SETTINGS_MODULE", "DEBUG", "CRYPTOPAY_STATE_DIR"):
        env.pop(name, None)
    return env


def run_bench(bench: Bench, *, quick: bool, env: dict[str, str]) -> Run:
    script = BENCH_DIR / f"{bench.name}.py"
    args = bench.quick if quick else bench.args
    run = Run(bench=bench, command=[sys.executable, "-m", f"bench.{bench.name}", *args])
    if not script.exists():
        run.skipped = f"bench/{bench.name}.py is not in this checkout"
        return run
    print(f"== {bench.name} {' '.join(args)}", flush=True)
    # A prefix of its own under the run's: benches run at once (--jobs) never share a queue.
    env = env | {"CRYPTOPAY_REDIS_PREFIX": f"{env['CRYPTOPAY_REDIS_PREFIX']}:{bench.name}"}
    start = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 (our own command line, no shell)
            run.command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=bench.timeout if not quick else 300,
        )
        run.returncode, run.output = done.returncode, done.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        run.output = out.decode(errors="replace") if isinstance(out, bytes) else out
        run.problems.append(f"timed out after {exc.timeout:g} s")
    run.seconds = time.monotonic() - start
    if run.returncode:
        run.problems.append(f"exit status {run.returncode}")
    result = parse(run.output)
    if result is None:
        run.problems.append("no figures (no RESULT line)")
    else:
        run.figures = result.get("figures", [])
        run.extra = {k: v for k, v in result.items() if k not in ("bench", "figures")}
        if not run.figures:
            run.problems.append("no figures")
        missing = [f["name"] for f in run.figures if f.get("value") is None]
        if missing:
            run.problems.append(f"figures without a value: {', '.join(missing)}")
    status = "ok" if run.ok else "; ".join(run.problems)
    print(f"   {bench.name}: {run.seconds:.1f} s, {len(run.figures)} figures, {status}", flush=True)
    return run


# --- the machine ------------------------------------------------------------------------------


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(  # noqa: S603 (fixed commands, no shell)
            command, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return ((done.stdout or done.stderr).strip().splitlines() or ["?"])[0]


def machine(env: dict[str, str]) -> list[tuple[str, str]]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    cpu = model.group(1).strip() if model else platform.processor() or "unknown"
    ram = "unknown"
    if Path("/proc/meminfo").exists():
        total = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        ram = f"{int(total.group(1)) / 1024 / 1024:.1f} GiB" if total else ram
    system = platform.platform()
    if Path("/etc/os-release").exists():
        pretty = re.search(r'PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text())
        system = pretty.group(1) if pretty else system
    affinity: int | None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    rows = [
        ("CPU", cpu),
        ("cores", f"{os.cpu_count()} logical ({affinity} usable by this process)"),
        ("RAM", ram),
        ("OS", system),
        ("kernel", platform.release()),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("PostgreSQL", postgres_version(env["DATABASE_URL"])),
        ("Redis", redis_version(env["REDIS_URL"])),
        ("wrk", _first_line([shutil.which("wrk") or "wrk", "--version"])),
    ]
    from importlib.metadata import PackageNotFoundError, version

    packages = []
    for name in ("Django", "daphne", "uvicorn", "channels", "djangorestframework"):
        try:
            packages.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            packages.append(f"{name} (not installed)")
    rows.append(("packages", ", ".join(packages)))
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    rows.append(
        ("commit", commit + (" (with uncommitted changes)" if dirty not in ("", "?") else ""))
    )
    return rows


def postgres_version(url: str) -> str:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT version()").fetchone()
            return str(row[0]) if row else "unknown"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


def redis_version(url: str) -> str:
    try:
        import redis

        info = redis.Redis.from_url(url, socket_timeout=5).info("server")
        return f"{info['redis_version']} ({info.get('os', '')})"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


def cleanup_redis(env: dict[str, str]) -> None:
    """The keys breaker_overhead.py left under this run's prefix."""
    try:
        import redis

        client = redis.Redis.from_url(env["REDIS_URL"], socket_timeout=5)
        stale = list(client.scan_iter(match=f"{env['CRYPTOPAY_REDIS_PREFIX']}*", count=1000))
        if stale:
            client.delete(*stale)
    except Exception as exc:
        print(f"warning: could not delete this run's Redis keys: {exc}")


# --- writing ----------------------------------------------------------------------------------


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if value == int(value) and abs(value) < 1000:
        return str(int(value))
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def comparisons(run: Run) -> list[tuple[dict[str, Any], str | None, float | None]]:
    """(figure, baseline name, ratio) rows: one per baseline of each figure, or one for a
    baseline itself."""
    values = {f["name"]: f["value"] for f in run.figures}
    rows: list[tuple[dict[str, Any], str | None, float | None]] = []
    for fig in run.figures:
        names = baselines_of(fig)
        if not names:
            rows.append((fig, None, None))
        for name in names:
            base = values.get(name)
            ratio = fig["value"] / base if fig["value"] is not None and base else None
            rows.append((fig, name, ratio))
    return rows


def goal_rows(runs: list[Run]) -> list[tuple[str, str, float | None, float, str]]:
    rows: list[tuple[str, str, float | None, float, str]] = []
    for claim, bench, with_, without, goal in GOALS:
        run = next((r for r in runs if r.bench.name == bench), None)
        if run is None:
            continue
        values = {f["name"]: f["value"] for f in run.figures}
        if values.get(with_) is None or values.get(without) is None:
            rows.append((claim, bench, None, goal, "no figure"))
            continue
        overhead = values[with_] - values[without]
        verdict = "met" if overhead < goal else "MISSED"
        if run.problems:
            verdict += " (the bench failed its checks: see its section)"
        rows.append((claim, bench, overhead, goal, verdict))
    return rows


def write_markdown(
    path: Path,
    runs: list[Run],
    *,
    quick: bool,
    facts: list[tuple[str, str]],
    started: dt.datetime,
    load: tuple[str, str],
    total: float,
) -> None:
    lines = ["# Benchmark results", ""]
    command = "make bench BENCH_QUICK=1" if quick else "make bench"
    lines += [
        f"Written by `{command}` (bench/report.py) on {started:%Y-%m-%d %H:%M} UTC in "
        f"{total / 60:.1f} min. Each bench ran alone, one after the other, as the command "
        "shown in its section; every figure below is the one that command printed, and every "
        "ratio is that figure divided by its **baseline**, a figure the same bench measured in "
        "the same run (named in the row). Where higher is better a ratio below 1.00x is a loss; "
        "where lower is better, a ratio above 1.00x is.",
        "",
    ]
    if quick:
        lines += [
            "**Quick run (smoke sizes): these figures only show that every bench runs; they are "
            "not representative.**",
            "",
        ]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in facts]
    lines += [
        f"| date | {started:%Y-%m-%d %H:%M:%S} UTC |",
        f"| load average | {load[0]} at start, {load[1]} at end (1/5/15 min) |",
        "",
        "The load average counts other work on the machine during the run; on 2 cores anything "
        "above ~2 means the benches shared the CPU and their figures are pessimistic and noisy.",
        "",
        "## Summary",
        "",
        "| bench | what | wall time | figures | status |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        status = run.skipped or ("ok" if run.ok else "FAILED: " + "; ".join(run.problems))
        lines.append(
            f"| [{run.bench.name}](#{run.bench.name}) | {run.bench.what} | "
            f"{run.seconds:.0f} s | {len(run.figures)} | {status} |"
        )
    goals = goal_rows(runs)
    if goals:
        lines += [
            "",
            "## Specification goals",
            "",
            "The specification promises < 5 ms of resilience overhead. Overhead = the figure with the "
            "layer minus the same figure without it, same bench, same run.",
            "",
            "| claim | bench | overhead | goal | |",
            "|---|---|---|---|---|",
        ]
        for claim, bench, overhead, goal, verdict in goals:
            shown = "—" if overhead is None else f"{overhead:+.2f} ms"
            verdict = "not judged (quick run)" if quick else verdict
            lines.append(f"| {claim} | {bench} | {shown} | < {goal:g} ms | {verdict} |")
    for run in runs:
        lines += ["", f"## {run.bench.name}", ""]
        shown = " ".join(["python -m", f"bench.{run.bench.name}", *run.command[3:]])
        lines.append(f"`{shown}` — {run.bench.what}.")
        lines.append("")
        if run.skipped:
            lines += [f"Not run: {run.skipped}.", ""]
            continue
        lines.append(
            f"Wall time {run.seconds:.1f} s, exit status {run.returncode}."
            + (f" **Problems: {'; '.join(run.problems)}.**" if run.problems else "")
        )
        if run.extra:
            lines.append(f"Also reported: `{json.dumps(run.extra, sort_keys=True)}`.")
        flagged = [
            line.strip()
            for line in run.output.splitlines()
            if line.lstrip().startswith(("CHECK FAILED", "CAUTION", "WARNING", "DEVIATION"))
        ]
        if flagged:
            lines += ["", "What the bench flagged:", ""]
            lines += ["- `" + line[:300].replace("`", "'") + "`" for line in flagged[:12]]
            if len(flagged) > 12:
                lines.append(f"- … and {len(flagged) - 12} more (see the output below)")
        lines += [
            "",
            "| figure | value | unit | better | baseline | ratio |",
            "|---|---:|---|---|---|---:|",
        ]
        for fig, base, ratio in comparisons(run):
            lines.append(
                f"| {fig['name']} | {number(fig['value'])} | {fig['unit']} | {fig['better']} | "
                f"{base or '*(baseline)*'} | {'—' if ratio is None else f'{ratio:.2f}x'} |"
            )
        printed = "\n".join(
            line for line in run.output.rstrip().splitlines() if not line.startswith("RESULT ")
        )
        lines += [
            "",
            "<details><summary>output</summary>",
            "",
            "```text",
            printed.replace("```", "'''"),
            "```",
            "",
            "</details>",
        ]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes (about 1.5 min)")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write the parsed figures here")
    parser.add_argument("--only", default="", help="comma-separated bench names")
    parser.add_argument("--skip", default="", help="comma-separated bench names")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --quick: run this many benches at once (they slow each other down, which a "
        "smoke run does not judge; a measuring run is always one at a time)",
    )
    args = parser.parse_args()
    if args.jobs < 1 or (args.jobs > 1 and not args.quick):
        parser.error("--jobs above 1 only with --quick: benches run at once measure each other")
    names = {b.name for b in BENCHES}
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}
    if (only | skip) - names:
        parser.error(f"unknown benches: {', '.join(sorted((only | skip) - names))}")

    env = bench_environment()
    started = dt.datetime.now(dt.UTC)
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    facts = machine(env)
    begin = time.monotonic()
    runs: list[Run] = []
    selected = [
        bench for bench in BENCHES if not ((only and bench.name not in only) or bench.name in skip)
    ]
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(lambda b: run_bench(b, quick=args.quick, env=env), selected))
    finally:
        cleanup_redis(env)
    total = time.monotonic() - begin
    load_end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    write_markdown(
        args.output,
        runs,
        quick=args.quick,
        facts=facts,
        started=started,
        load=(load_start, load_end),
        total=total,
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "seconds": total,
                    "benches": [
                        {
                            "name": run.bench.name,
                            "seconds": run.seconds,
                            "returncode": run.returncode,
                            "skipped": run.skipped,
                            "problems": run.problems,
                            "figures": run.figures,
                            "ratios": [
                                {"figure": fig["name"], "baseline": base, "ratio": ratio}
                                for fig, base, ratio in comparisons(run)
                            ],
                        }
                        for run in runs
                    ],
                },
                indent=2,
            )
        )
    failed = [run.bench.name for run in runs if run.problems]
    print(
        f"wrote {args.output} in {total:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
