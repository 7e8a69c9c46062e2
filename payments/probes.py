"""The payments app's dependencies for the degradation handler (resilience/degradation.py).

* ``rates:<provider>``: each configured exchange; probe = one ticker request (no retries, outside
  its breaker, so it tells whether the exchange answers, not what the breaker believes).
* ``exchange-rates``: the group of providers. Never Critical: quotes still come from the cache,
  emergency and fallback levels. Recovery switches to the backup provider (takes a failing one
  out of rotation while another answers, puts it back when it answers again) and clears the
  failing provider's contribution from the cached quotes: every pair whose cached quote used its
  price is re-quoted at once from the providers still in rotation. When no provider answers, the
  cached copies are kept, because dropping them would push payments to the static fallback.
* ``chain:<name>:<index>:<host:port>``: each node of each configured chain (the names are its
  breakers'); probe = the block height.
* ``chain:<name>``: the group of a chain's nodes. Recovery reconnects (fresh HTTP connections) and
  switches node like the rates. Critical when no node answers, and then the chain-read chain
  falls back to its last step: **expiry timers of that chain's payments are paused**
  (``expiry_held_currencies``; ``payments_expire_due`` leaves them pending until a node answers,
  because a buyer may have paid where we cannot see).
* ``token:<chain>:<code>``: each configured ERC-20; probe = its contract's ``decimals()`` against
  the configured decimals (first node that answers). Unavailable on a mismatch: the watcher does
  not watch that token (payments/chains/evm.py). Degraded when no node answers (the chain's own
  dependency says why).
* ``wallets:gap-limit``: degraded while any merchant wallet key has more unpaid addresses in a row
  than the gap limit wallets scan (payments/addresses.py); addresses keep being issued.
"""

from __future__ import annotations

import logging
from functools import partial

from django.conf import settings

from resilience.degradation import (
    FAILED,
    MITIGATED,
    Dependency,
    Level,
    OperationChain,
    Probe,
    RecoveryContext,
    RecoveryResult,
    dependency_source_register,
    rotation_recover,
    rotation_summary,
)
from resilience.failover import redact

logger = logging.getLogger(__name__)

USABLE = (Level.HEALTHY, Level.DEGRADED)


# --- exchange rates -----------------------------------------------------------------------------


def _probe_pair(provider) -> str | None:
    """A pair the provider quotes, preferring the configured fallback pairs (what we price)."""
    for pair in [*settings.FALLBACK_RATES, *provider.symbols]:
        if provider.supports(pair):
            return pair
    return None


def rate_provider_probe(*, name: str) -> Probe:
    from payments.rates.live import configured_providers, http_client

    provider = next(p for p in configured_providers() if p.name == name)
    pair = _probe_pair(provider)
    if pair is None:
        return Probe.degraded("quotes none of our pairs")
    price = provider.fetch(pair=pair, client=http_client())
    return Probe.ok(pair=pair, price=f"{price.price.normalize():f}")


def rates_cache_requote(*, provider: str) -> tuple[int, int]:
    """Re-quote every cached pair whose quote used ``provider``'s price, from the providers in
    rotation. Returns (re-quoted, kept because no provider answered)."""
    from payments.rates.quotes import LIVE, rate_cache, rate_quote
    from payments.rates.refresh import rate_pairs_in_use

    cache = rate_cache()
    requoted = kept = 0
    for pair in sorted({*cache.emergency.keys(), *rate_pairs_in_use()}):
        answer = cache.peek(pair)
        if answer is None:
            continue
        if not any(p["name"] == provider and p.get("used") for p in answer.value.providers):
            continue
        crypto_currency, fiat_currency = pair.split("-")
        quote = rate_quote(
            crypto_currency=crypto_currency, fiat_currency=fiat_currency, force_refresh=True
        )
        if quote.source == LIVE:
            requoted += 1
        else:
            kept += 1
    return requoted, kept


def rates_recover(context: RecoveryContext) -> RecoveryResult:
    taken_out, put_back, problems = rotation_recover(context)
    notes = []
    for name in taken_out:
        requoted, kept = rates_cache_requote(provider=name.removeprefix("rates:"))
        notes.append(f"{name}: {requoted} cached quote(s) replaced, {kept} kept (no backup)")
    detail = "; ".join([rotation_summary(taken_out, put_back, problems), *notes])
    return RecoveryResult(MITIGATED if taken_out or put_back else FAILED, detail)


def _quotes_current(members: list[str], levels: dict[str, Level]) -> str:
    if any(levels.get(name) in USABLE for name in members):
        return "live"
    return "cache, emergency or fallback (by the age of the last good quote)"


def rate_dependencies() -> list[Dependency | OperationChain]:
    from payments.rates.live import configured_providers, provider_breaker

    members = []
    for provider in configured_providers():
        members.append(
            Dependency(
                name=f"rates:{provider.name}",
                kind="rates",
                description=f"{provider.name} ticker ({redact(provider.base_url)})",
                probe=partial(rate_provider_probe, name=provider.name),
                tags=frozenset({"external"}),
                breaker=partial(provider_breaker, provider.name),
            )
        )
    if not members:
        return []
    names = tuple(m.name for m in members)
    return [
        *members,
        Dependency(
            name="exchange-rates",
            kind="rates",
            description="live exchange rates (providers in order, primary first)",
            members=names,
            critical_without_members=False,
            recover=rates_recover,
        ),
        OperationChain(
            name="quotes",
            steps=("live", "cache", "emergency", "fallback"),
            dependency="exchange-rates",
            current=partial(_quotes_current, list(names)),
        ),
    ]


# --- chains -------------------------------------------------------------------------------------


def chain_node_probe(*, url: str, kind: str) -> Probe:
    from payments.chains.rpc import RpcError, json_rpc

    method = "getblockcount" if kind == "utxo" else "eth_blockNumber"
    timeout = min(settings.CHAIN_RPC_TIMEOUT, settings.HEALTH_PROBE_TIMEOUT).total_seconds()
    try:
        height = json_rpc(url, method, [], timeout=timeout)
    except RpcError as exc:
        return Probe.degraded(f"answers with an error: {exc}", node=redact(url))
    if isinstance(height, str):
        height = int(height, 16)
    return Probe.ok(node=redact(url), height=height)


def chain_recover(context: RecoveryContext) -> RecoveryResult:
    from payments.chains.rpc import http_client_reset

    http_client_reset()
    taken_out, put_back, problems = rotation_recover(context)
    detail = "reconnected; " + rotation_summary(taken_out, put_back, problems)
    answering = any(p.status != "unavailable" for p in context.probes.values())
    return RecoveryResult(MITIGATED if answering else FAILED, detail)


def _chain_reads_current(members: list[str], steps: list[str], levels: dict[str, Level]) -> str:
    for name, step in zip(members, steps, strict=False):
        if levels.get(name) in USABLE:
            return step
    return steps[-1]


def chain_dependencies() -> list[Dependency | OperationChain]:
    from payments.chains.config import chains
    from payments.chains.rpc import NodeClient

    items: list[Dependency | OperationChain] = []
    for chain in chains().values():
        pool = NodeClient(chain).pool
        members = [
            Dependency(
                name=f"{pool.name}:{index}:{redact(url)}",
                kind="chain",
                description=f"{chain.name} node {index + 1}",
                probe=partial(chain_node_probe, url=url, kind=chain.kind),
                tags=frozenset({"external"}),
                breaker=partial(pool.breaker, index),
            )
            for index, url in enumerate(chain.nodes)
        ]
        names = tuple(m.name for m in members)
        steps = [f"node {i + 1} ({redact(url)})" for i, url in enumerate(chain.nodes)]
        steps.append("pause expiry timers")
        items += [
            *members,
            Dependency(
                name=pool.name,
                kind="chain",
                description=f"{chain.name} ({chain.currency}) nodes in failover order",
                members=names,
                recover=chain_recover,
            ),
            OperationChain(
                name=f"chain-reads:{chain.name}",
                steps=tuple(steps),
                dependency=pool.name,
                current=partial(_chain_reads_current, list(names), steps),
            ),
        ]
    return items


def token_decimals_probe(*, chain_name: str, currency: str) -> Probe:
    from payments.chains.config import chains
    from payments.chains.evm import token_decimals_onchain, token_decimals_problem
    from payments.chains.rpc import NodeUnavailable, json_rpc

    chain = chains()[chain_name]
    token = chain.tokens[currency]
    timeout = min(settings.CHAIN_RPC_TIMEOUT, settings.HEALTH_PROBE_TIMEOUT).total_seconds()
    for url in chain.nodes:

        def call(method: str, *params: object, url: str = url) -> object:
            return json_rpc(url, method, list(params), timeout=timeout)

        try:
            onchain = token_decimals_onchain(token=token, call=call)
        except NodeUnavailable:
            continue
        found = {"token": token.address, "configured": token.decimals, "onchain": onchain}
        problem = token_decimals_problem(chain=chain.name, token=token, onchain=onchain)
        if problem:
            return Probe.unavailable(problem, **found)
        return Probe.ok(**found)
    return Probe.degraded("no node answers; decimals not checked", token=token.address)


def token_dependencies() -> list[Dependency | OperationChain]:
    from payments.chains.config import chains

    return [
        Dependency(
            name=f"token:{chain.name}:{code}",
            kind="chain",
            description=f"{code} on {chain.name}: the contract's decimals() is the configured "
            f"{token.decimals}",
            probe=partial(token_decimals_probe, chain_name=chain.name, currency=code),
            tags=frozenset({"external"}),
        )
        for chain in chains().values()
        if chain.kind == "evm"
        for code, token in chain.tokens.items()
    ]


def gap_limit_probe() -> Probe:
    from payments.addresses import wallet_gap_runs

    runs = wallet_gap_runs()
    over = [gap for gap in runs if gap.over]
    if not over:
        return Probe.ok(wallets=len(runs))
    return Probe.degraded(
        "; ".join(
            f"merchant {gap.merchant.public_id} {'/'.join(gap.currencies)}: {gap.run} unpaid "
            f"addresses in a row (gap limit {gap.limit})"
            for gap in over[:10]
        )
        + ". Raise the gap limit in the merchant's wallet software, or have buyers pay.",
        over=len(over),
        wallets=len(runs),
    )


def wallet_dependencies() -> list[Dependency]:
    return [
        Dependency(
            name="wallets:gap-limit",
            kind="wallets",
            description="merchant wallet keys within the gap limit wallets scan",
            probe=gap_limit_probe,
            tags=frozenset({"external"}),
            uses_database=True,
        )
    ]


def expiry_held_currencies() -> list[str]:
    """Currencies whose chain has no answering node (level Critical): their expiry is paused."""
    from payments.chains.config import chains

    configured = chains()
    if not configured:
        return []
    from resilience.selectors import dependency_levels

    levels = dependency_levels()
    held = []
    for chain in configured.values():
        if levels.get(f"chain:{chain.name}") is Level.CRITICAL:
            held += chain.currencies
    return held


def register() -> None:
    dependency_source_register(key="payments.rates", source=rate_dependencies)
    dependency_source_register(key="payments.chains", source=chain_dependencies)
    dependency_source_register(key="payments.tokens", source=token_dependencies)
    dependency_source_register(key="payments.wallets", source=wallet_dependencies)
