// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Passes the ETH it is sent on to another address, as a smart-contract wallet or an exchange's
/// payout contract does: the recipient gets it in an internal transaction, never as a top-level
/// transfer.
contract Forwarder {
    function forward(address payable to) external payable {
        to.transfer(msg.value);
    }

    /// Sends ETH in a sub-call that then reverts: nothing reaches ``to``.
    function forwardAndRevert(address payable to) external payable {
        try this.sendThenFail{value: msg.value}(to) {} catch {}
    }

    function sendThenFail(address payable to) external payable {
        to.transfer(msg.value);
        revert("undone");
    }
}
