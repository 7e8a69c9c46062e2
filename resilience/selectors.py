"""Reads for the resilience dashboard and the apps: dependency levels and recovery history."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from resilience import clock
from resilience.degradation import Level, registry, state_read_all


@dataclass(frozen=True)
class DependencyView:
    name: str
    kind: str
    description: str
    configured: bool
    level: Level  # Unknown when the last probe is older than three monitoring intervals
    reason: str
    level_since: datetime | None
    checked_at: datetime | None
    probe_ms: int | None
    diagnostics: dict[str, Any]
    members: tuple[str, ...]
    has_recovery: bool
    recovery_isolated: bool  # recovery took it out of rotation (switched to a backup)
    recovery_attempts: int
    recovery_failures: int
    last_recovery_at: datetime | None
    last_recovery_outcome: str  # recovered, mitigated, failed or "" (never attempted)
    last_recovery_detail: str
    tags: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class OperationChainView:
    name: str
    steps: tuple[str, ...]
    current: str | None
    dependency: str
    level: Level


def _level(state: dict[str, Any], now: datetime) -> tuple[Level, str]:
    checked_at = state.get("checked_at")
    if checked_at is None or not state.get("level"):
        return Level.UNKNOWN, "not probed yet"
    stale_after = settings.HEALTH_MONITOR_INTERVAL * 3
    if now - checked_at > stale_after:
        return Level.UNKNOWN, f"last probed {int((now - checked_at).total_seconds())} s ago"
    return Level(state["level"]), state.get("reason") or ""


def dependency_list() -> list[DependencyView]:
    """Every registered dependency (configured or not) with its last level and recovery."""
    states = state_read_all()
    now = clock.now()
    views = []
    for dependency in registry.dependencies():
        state = states.get(dependency.name, {})
        level, reason = _level(state, now) if dependency.configured else (Level.UNKNOWN, "")
        views.append(
            DependencyView(
                name=dependency.name,
                kind=dependency.kind,
                description=dependency.description,
                configured=dependency.configured,
                level=level,
                reason=reason if dependency.configured else "not configured",
                level_since=state.get("level_since"),
                checked_at=state.get("checked_at"),
                probe_ms=state.get("probe_ms"),
                diagnostics=state.get("diagnostics") or {},
                members=dependency.members,
                has_recovery=dependency.recover is not None,
                recovery_isolated=bool(state.get("recovery_isolated")),
                recovery_attempts=state.get("recovery_attempts") or 0,
                recovery_failures=state.get("recovery_failures") or 0,
                last_recovery_at=state.get("last_recovery_at"),
                last_recovery_outcome=state.get("last_recovery_outcome") or "",
                last_recovery_detail=state.get("last_recovery_detail") or "",
                tags=dependency.tags,
            )
        )
    return views


def dependency_levels() -> dict[str, Level]:
    """name -> level of every configured dependency (Unknown when stale or never probed)."""
    states = state_read_all()
    now = clock.now()
    return {
        d.name: _level(states.get(d.name, {}), now)[0]
        for d in registry.dependencies()
        if d.configured
    }


def operation_chain_list() -> list[OperationChainView]:
    levels = dependency_levels()
    return [
        OperationChainView(
            name=chain.name,
            steps=chain.steps,
            current=chain.current(levels) if chain.current else None,
            dependency=chain.dependency,
            level=levels.get(chain.dependency, Level.UNKNOWN),
        )
        for chain in registry.operation_chains()
    ]
