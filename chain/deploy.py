"""Deploy GradMeshNetwork from the committed artifact."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from web3 import Web3

from chain.artifact import load_artifact
from chain.client import ChainParams
from chain.errors import ChainError, TransactionFailedError


def deploy_network(w3: Web3, private_key: bytes | str, params: ChainParams,
                   fund: int = 0, timeout_s: float = 60.0, run_spec: bytes = bytes(32)) -> str:
    """Deploy with `params`, seeding the emission pool with `fund` wei and recording the
    run spec's sha256 (`run_spec`, zero: none); returns the address."""
    if len(run_spec) != 32:
        raise ChainError(f"run spec hash must be 32 bytes, got {len(run_spec)}")
    artifact = load_artifact()
    account = Account.from_key(private_key)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    constructor = factory.constructor(params.as_tuple(), run_spec)
    sender: dict[str, Any] = {"from": account.address, "value": fund}
    try:
        gas = constructor.estimate_gas(sender)
    except Exception as exc:  # web3 raises many types for a failing constructor
        raise ChainError(f"deployment would fail: {exc}") from exc
    tx = constructor.build_transaction({
        **sender, "gas": gas + gas // 5, "gasPrice": w3.eth.gas_price,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        "chainId": w3.eth.chain_id,
    })
    signed = Account.sign_transaction(tx, account.key)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout_s)
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise TransactionFailedError("deployment transaction failed")
    return str(receipt["contractAddress"])
