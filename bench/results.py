"""The machine-readable line each bench prints last, for ``bench/report.py``.

    RESULT {"bench": "<script name>", "figures": [{...}, ...]}

A figure is ``name`` (unique in its bench), ``value``, ``unit``, ``better`` ("higher" or "lower")
and ``baseline``: the name of the figure in the same bench it is compared with (or a list of such
names: one comparison each), or None when it is a baseline itself. The report divides every figure
by its baseline's value. The human-readable output above the line stays the bench's own.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

PREFIX = "RESULT "


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    baseline: str | list[str] | None,
    better: str = "lower",
) -> dict[str, Any]:
    assert better in ("higher", "lower"), better
    number = float(value)
    return {
        "name": name,
        "value": None if math.isnan(number) or math.isinf(number) else number,
        "unit": unit,
        "better": better,
        "baseline": baseline,
    }


def emit(bench: str, figures: list[dict[str, Any]], **extra: Any) -> None:
    names = [f["name"] for f in figures]
    assert len(names) == len(set(names)), f"duplicate figure names in {bench}"
    unknown = {b for f in figures for b in baselines_of(f)} - set(names)
    assert not unknown, f"{bench}: baselines {unknown} are not figures"
    print(PREFIX + json.dumps({"bench": bench, "figures": figures, **extra}), flush=True)


def baselines_of(fig: dict[str, Any]) -> list[str]:
    baseline = fig.get("baseline")
    if not baseline:
        return []
    return [baseline] if isinstance(baseline, str) else list(baseline)


def parse(output: str) -> dict[str, Any] | None:
    """The last RESULT line of a bench's output, or None."""
    found = None
    for line in output.splitlines():
        if line.startswith(PREFIX):
            found = json.loads(line[len(PREFIX) :])
    return found


def timed(
    call: Callable[[], Any],
    *,
    before: Callable[[], None] | None = None,
    after: Callable[[Any], None] | None = None,
) -> Callable[[], float]:
    """``call`` as a variant for ``rotating_rounds``: it returns the seconds ``call`` took, with
    ``before`` (setting it up) and ``after`` (given its result) run untimed."""

    def run() -> float:
        if before:
            before()
        start = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - start
        if after:
            after(result)
        return elapsed

    return run


def rotating_rounds(
    variants: Mapping[str, Callable[[], float]], *, rounds: int, per_round: int
) -> dict[str, list[float]]:
    """The seconds of every call of each variant: ``per_round`` calls at a time, the variants in
    an order that rotates each round, so drift (other load, cache warmth, a table's growth)
    falls evenly on all of them."""
    samples: dict[str, list[float]] = {label: [] for label in variants}
    labels = list(variants)
    for round_ in range(rounds):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            for _ in range(per_round):
                samples[label].append(variants[label]())
    return samples
