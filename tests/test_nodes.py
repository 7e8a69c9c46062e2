"""The node controllers in testing/nodes.py drive real litecoind and anvil processes.

The fixtures (litecoind, litecoind_factory, anvil, anvil_factory) come from testing/nodes.py via
tests/conftest.py.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from testing.nodes import TRANSFER_TOPIC, Anvil, Litecoind, RPCError


def test_litecoind_send_goes_to_mempool_then_a_block(litecoind: Litecoind) -> None:
    address = litecoind.new_address()
    assert address.startswith("rltc1")

    txid = litecoind.send(address, Decimal("1.25"))

    assert txid in litecoind.rpc("getrawmempool")
    unconfirmed = litecoind.rpc("getrawtransaction", txid, True)
    assert "confirmations" not in unconfirmed
    [block_hash] = litecoind.mine()
    # Without -txindex (as merchants run it) a mined transaction is found through its block.
    with pytest.raises(RPCError):
        litecoind.rpc("getrawtransaction", txid, True)
    confirmed = litecoind.rpc("getrawtransaction", txid, True, block_hash)
    assert confirmed["confirmations"] == 1
    assert confirmed["blockhash"] == block_hash
    paid = [
        out["value"]
        for out in confirmed["vout"]
        if out["scriptPubKey"].get("addresses") == [address]
    ]
    assert paid == [Decimal("1.25")]
    assert txid not in litecoind.rpc("getrawmempool")


def test_litecoind_rbf_send_is_replaceable(litecoind: Litecoind) -> None:
    txid = litecoind.send_rbf(litecoind.new_address(), Decimal("0.5"))
    assert litecoind.rpc("getmempoolentry", txid)["bip125-replaceable"] is True

    replacement = litecoind.bump_fee(txid)

    mempool = litecoind.rpc("getrawmempool")
    assert replacement in mempool
    assert txid not in mempool
    litecoind.mine()


def test_litecoind_invalidate_and_reconsider_move_the_tip(litecoind: Litecoind) -> None:
    parent, tip = litecoind.mine(2)
    height = litecoind.block_count()

    litecoind.invalidate(tip)
    assert litecoind.best_block_hash() == parent
    assert litecoind.block_count() == height - 1

    litecoind.reconsider(tip)
    assert litecoind.best_block_hash() == tip


def test_litecoind_reorg_replaces_blocks_and_keeps_the_transaction(litecoind: Litecoind) -> None:
    txid = litecoind.send(litecoind.new_address(), Decimal("0.1"))
    [old_block] = litecoind.mine()

    new_blocks = litecoind.reorg(1)

    assert old_block not in new_blocks
    assert litecoind.best_block_hash() == new_blocks[-1]
    tx = litecoind.rpc("gettransaction", txid)
    assert tx["blockhash"] == new_blocks[0]
    assert tx["confirmations"] == 2


def test_litecoind_mines_and_sends_past_the_mweb_activation_height(litecoind: Litecoind) -> None:
    if (short := 440 - litecoind.block_count()) > 0:
        litecoind.mine(short)
    txid = litecoind.send(litecoind.new_address(), Decimal("2"))
    [block_hash] = litecoind.mine()
    assert litecoind.rpc("gettransaction", txid)["blockhash"] == block_hash
    assert "mweb" not in litecoind.rpc("getblockchaininfo")["softforks"]


def test_a_second_litecoind_runs_alongside(litecoind: Litecoind, litecoind_factory) -> None:
    other = litecoind_factory(initial_blocks=0)

    assert other.rpc_port != litecoind.rpc_port
    assert other.datadir != litecoind.datadir
    assert other.block_count() == 0
    assert litecoind.block_count() >= 101
    assert other.url.startswith(f"http://{other.rpc_user}:{other.rpc_password}@127.0.0.1:")
    other.stop()
    assert not other.is_running()


def test_anvil_eth_transfer_changes_the_balance(anvil: Anvil) -> None:
    sender, receiver = anvil.accounts[0], anvil.accounts[1]
    assert int(anvil.rpc("eth_chainId"), 16) == 31337
    before = anvil.balance(receiver)

    tx_hash = anvil.send_eth(receiver, 10**18)

    assert int(anvil.receipt(tx_hash)["status"], 16) == 1
    assert anvil.balance(receiver) == before + 10**18
    assert anvil.balance(sender) < 10_000 * 10**18


def test_anvil_erc20_decimals_transfer_and_transfer_log(anvil: Anvil) -> None:
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    deployer, receiver = anvil.accounts[0], anvil.accounts[2]
    assert anvil.erc20_decimals(token) == 6
    assert anvil.erc20_balance(token, deployer) == 10**9 * 10**6

    tx_hash = anvil.erc20_transfer(token, receiver, 12_345_678)

    receipt = anvil.receipt(tx_hash)
    assert int(receipt["status"], 16) == 1
    assert anvil.erc20_balance(token, receiver) == 12_345_678
    logs = anvil.rpc(
        "eth_getLogs",
        {
            "fromBlock": receipt["blockNumber"],
            "toBlock": receipt["blockNumber"],
            "address": token,
            "topics": [TRANSFER_TOPIC],
        },
    )
    [log] = logs
    assert log["transactionHash"] == tx_hash
    assert log["topics"][1] == "0x" + deployer[2:].rjust(64, "0")
    assert log["topics"][2] == "0x" + receiver[2:].rjust(64, "0")
    assert int(log["data"], 16) == 12_345_678


def test_anvil_reorg_drops_a_just_mined_transfer(anvil: Anvil) -> None:
    receiver = anvil.accounts[3]
    before = anvil.balance(receiver)
    tx_hash = anvil.send_eth(receiver, 5 * 10**17)
    height = int(anvil.receipt(tx_hash)["blockNumber"], 16)
    old_hash = anvil.block_hash(height)

    anvil.reorg(1)

    assert anvil.block_number() == height
    assert anvil.block_hash(height) != old_hash
    assert anvil.receipt(tx_hash) is None
    assert anvil.balance(receiver) == before


def test_anvil_without_automine_mines_on_demand(anvil_factory) -> None:
    anvil = anvil_factory(automine=False)
    start = anvil.block_number()
    snapshot = anvil.snapshot()

    tx_hash = anvil.send_eth(anvil.accounts[1], 1)
    assert anvil.receipt(tx_hash) is None
    assert anvil.mine(3) == start + 3
    assert int(anvil.receipt(tx_hash)["blockNumber"], 16) == start + 1

    assert anvil.revert(snapshot)
    assert anvil.block_number() == start
    assert anvil.receipt(tx_hash) is None


def test_killed_anvil_refuses_connections_while_another_answers(anvil_factory) -> None:
    first, second = anvil_factory(), anvil_factory()
    assert first.port != second.port

    first.kill()

    assert not first.is_running()
    with pytest.raises(httpx.ConnectError):
        httpx.post(first.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})
    assert second.block_number() == 0
