"""One 300 MiB multipart POST to /health/live, no credentials: the server's
peak memory and how long other clients wait meanwhile, for daphne (the old web command, the
baseline) and the gateway (``manage.py serve``: uvicorn with cryptopay/server.py).

    .venv/bin/python -m bench.body_flood [--size-mib 300] [--servers daphne,gateway]

Each server runs in its own process on this machine, one after the other, in services mode
(DATABASE_URL / REDIS_URL as for the other benches; /health/live touches neither). Peak RSS is
VmHWM from /proc, summed over the server and its workers. Another client asks /health/live in a
loop from the start of the upload until the server has answered the attacker (or hung up on it):
its slowest and median answers are the latency figures. tests/security/test_server_limits.py
asserts the gateway's bounds; this prints both servers' figures side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import httpx

from bench.results import emit, figure
from testing.attacks import MIB, multipart_flood, probing
from testing.nodes import free_port, spawn
from testing.servers import Server, server_command

ENV = {
    "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "SECRET_KEY": "bench-only-secret-key-" + "x" * 40,
    "DEBUG": "0",
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "0",
    "DJANGO_SETTINGS_MODULE": "cryptopay.settings",
}


def attack(kind: str, size: int, log_dir: Path) -> dict[str, float | str]:
    port = free_port()
    process = spawn(
        server_command(kind, port), log=log_dir / f"{kind}.log", env={**os.environ, **ENV}
    )
    server = Server(process=process, port=port, log=log_dir / f"{kind}.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start:\n{server.output()[-2000:]}")
            with suppress(httpx.TransportError):
                httpx.get(f"{server.base_url}/health/live", timeout=1)
                break
            time.sleep(0.1)  # a starting process offers nothing to wait on but its port
        before = server.peak_rss_bytes()
        started = time.perf_counter()
        with probing(server.base_url, strict=False) as prober:
            answer = multipart_flood(port, "/health/live", size, timeout=600)
            attack_seconds = time.perf_counter() - started
            prober.wait_for_answers(len(prober.latencies) + 1, timeout=600)
        peak = server.peak_rss_bytes()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # Seen once in three-at-once smoke runs (daphne): the figures are measured by now, so
            # say so with the server's last words and go on rather than lose them.
            process.kill()
            process.wait(timeout=30)
            print(
                f"CAUTION: {kind} did not stop within 30 s of SIGTERM and was killed; its log "
                f"ends:\n{server.output()[-1500:]}",
                flush=True,
            )
    latencies = prober.latencies or [float("nan")]
    return {
        "answer": answer,
        "rss_before_mib": before / MIB,
        "peak_rss_mib": peak / MIB,
        "attack_s": attack_seconds,
        "others_max_ms": max(latencies) * 1000,
        "others_p50_ms": statistics.median(latencies) * 1000,
        "others_answered": len(prober.latencies),
        "others_failed": len(prober.failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=300)
    parser.add_argument("--servers", default="daphne,gateway")
    args = parser.parse_args()
    kinds = args.servers.split(",")
    results = {}
    with tempfile.TemporaryDirectory(prefix="body-flood-") as log_dir:
        for kind in kinds:
            results[kind] = attack(kind, args.size_mib * MIB, Path(log_dir))
            r = results[kind]
            print(
                f"{kind:8} {args.size_mib} MiB POST /health/live -> {r['answer']!r} after "
                f"{r['attack_s']:.1f} s; RSS {r['rss_before_mib']:.0f} -> peak "
                f"{r['peak_rss_mib']:.0f} MiB; other clients: {r['others_answered']} answered, "
                f"{r['others_failed']} failed, p50 {r['others_p50_ms']:.1f} ms, "
                f"max {r['others_max_ms']:.1f} ms",
                flush=True,
            )
    figures = []
    base = kinds[0]
    for kind in kinds:
        for name, unit in (("peak_rss_mib", "MiB"), ("others_max_ms", "ms")):
            figures.append(
                figure(
                    f"{kind}_{name}",
                    float(results[kind][name]),
                    unit,
                    baseline=None if kind == base else f"{base}_{name}",
                )
            )
    emit("body_flood", figures, size_mib=args.size_mib)


if __name__ == "__main__":
    main()
