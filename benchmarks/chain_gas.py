"""Gas used by GradMeshNetwork's hot paths as the network grows.

For each (miners, validators) size a fresh contract is deployed with exactly that
capacity, every slot is filled, and each validator commits and reveals a dense weight
vector over all miners (the worst case for storage and for settlement). Reported:

* register (free slot)  - a miner taking the next never-used slot;
* register (prune)      - a newcomer when the set is full, scanning every slot to find the
                          weakest miner past immunity (the worst case of register);
* commitWeights         - one validator;
* revealWeights         - the most expensive reveal of the epoch (dense, all miners);
* settle                - one call settling the whole epoch.

The block gas limit compared against is the chain's (30,000,000 by default: the
Ethereum mainnet target block size limit at the time of writing, and anvil's default).

    python benchmarks/chain_gas.py                    # anvil if installed, else embedded
    python benchmarks/chain_gas.py --backend embedded --miners 16,64 --validators 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_abi import encode
from eth_account import Account
from eth_utils import keccak
from web3.types import RPCEndpoint

from chain.launch import DEFAULT_GAS_LIMIT, AnvilChain, EmbeddedChain, find_anvil

BPW, WPE, REVEAL = 10, 10, 5


def params(n_miners: int, n_validators: int) -> dict[str, int]:
    return {
        "blocksPerWindow": BPW,
        "windowsPerEpoch": WPE,
        "revealWindows": REVEAL,
        "minStake": 10**15,
        "maxMiners": n_miners,
        "maxValidators": n_validators,
        "immunityWindows": 0,
        "unstakeCooldownWindows": 1,
        "emissionPerEpoch": 10**18 + 12_345,
        "validatorShareBps": 1_800,
        "aggregationSize": 16,
    }


def fund(chain: Any, accounts: list[Any]) -> None:
    if isinstance(chain, AnvilChain):
        for a in accounts:
            chain.w3.provider.make_request(
                RPCEndpoint("anvil_setBalance"), [a.address, hex(10**21)]
            )
        return
    src = chain.accounts[0]
    nonce = chain.w3.eth.get_transaction_count(src.address)
    for a in accounts:
        tx = {
            "to": a.address,
            "value": 10**21,
            "gas": 21_000,
            "nonce": nonce,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 1,
            "chainId": chain.w3.eth.chain_id,
        }
        chain.w3.eth.send_raw_transaction(src.sign_transaction(tx).raw_transaction)
        nonce += 1


def send(chain: Any, fn: Any, acct: Any, value: int = 0) -> int:
    tx = fn.build_transaction({"from": acct.address, "value": value})
    tx["gas"] = min(int(tx["gas"]) * 2, chain.gas_limit)
    receipt = chain.send(tx, acct)
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction reverted: {fn.fn_name}")
    return int(receipt["gasUsed"])


def advance_to_window(chain: Any, genesis: int, window: int) -> None:
    n = genesis + window * BPW - chain.w3.eth.block_number
    if n > 0:
        chain.mine(n)


def measure(chain: Any, pool: list[Any], n_miners: int, n_validators: int) -> dict[str, int]:
    p = params(n_miners, n_validators)
    address = chain.deploy(p, 5 * p["emissionPerEpoch"], chain.accounts[0])
    c = chain.contract(address)
    f = c.functions
    genesis = int(f.genesisBlock().call())
    miners = pool[:n_miners]
    vals = pool[n_miners : n_miners + n_validators]
    newcomer = pool[n_miners + n_validators]
    out: dict[str, int] = {}
    for i, m in enumerate(miners):
        g = send(chain, f.register(1, b"12D3KooW" + i.to_bytes(4, "big")), m, p["minStake"])
    out["register"] = g  # last free slot
    for v in vals:
        send(chain, f.register(2, b"validator"), v, 10**16)

    window = int((chain.w3.eth.block_number - genesis) // BPW)
    epoch = window // WPE + 1
    advance_to_window(chain, genesis, epoch * WPE)
    uids = list(range(n_miners))
    reveals = []
    commit_gas = 0
    for j, v in enumerate(vals):
        weights = [((u * 7_919 + j * 104_729) % 1_000_000) + 1 for u in uids]
        salt = keccak(text=f"salt{j}")
        com = keccak(
            encode(
                ["address", "uint64", "uint16[]", "uint32[]", "bytes32"],
                [v.address, epoch, uids, weights, salt],
            )
        )
        commit_gas = max(commit_gas, send(chain, f.commitWeights(epoch, com), v))
        reveals.append((v, weights, salt))
    out["commitWeights"] = commit_gas
    advance_to_window(chain, genesis, (epoch + 1) * WPE)
    out["revealWeights"] = max(
        send(chain, f.revealWeights(epoch, uids, w, s), v) for v, w, s in reveals
    )
    advance_to_window(chain, genesis, (epoch + 1) * WPE + REVEAL)
    out["settle"] = send(chain, f.settle(epoch), chain.accounts[0])
    out["register (prune)"] = send(chain, f.register(1, b"newcomer"), newcomer, p["minStake"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backend", choices=["auto", "anvil", "embedded"], default="auto")
    ap.add_argument("--miners", default="16,64,256")
    ap.add_argument("--validators", default="4,16")
    ap.add_argument("--gas-limit", type=int, default=DEFAULT_GAS_LIMIT)
    args = ap.parse_args()
    backend = args.backend
    if backend == "auto":
        backend = "anvil" if find_anvil() else "embedded"
    sizes_m = [int(x) for x in args.miners.split(",")]
    sizes_v = [int(x) for x in args.validators.split(",")]
    # measurement accounts: deterministic throwaway keys, funded on the dev chain
    pool = [
        Account.from_key(keccak(text=f"gradmesh-bench-{i}"))
        for i in range(max(sizes_m) + max(sizes_v) + 1)
    ]
    cls = AnvilChain if backend == "anvil" else EmbeddedChain
    t0 = time.monotonic()
    rows = []
    with cls(num_accounts=2, gas_limit=args.gas_limit) as chain:
        fund(chain, pool)
        for n in sizes_m:
            for v in sizes_v:
                rows.append((n, v, measure(chain, pool, n, v)))
    cols = ["register", "register (prune)", "commitWeights", "revealWeights", "settle"]
    print(
        f"GradMeshNetwork gas ({backend} backend, block gas limit {args.gas_limit:,}; "
        f"{time.monotonic() - t0:.0f}s)\n"
    )
    print("| miners | validators | " + " | ".join(cols) + " | settle / block limit |")
    print("|---:|---:|" + "---:|" * len(cols) + "---:|")
    for n, v, g in rows:
        cells = " | ".join(f"{g[c]:,}" for c in cols)
        print(f"| {n} | {v} | {cells} | {100 * g['settle'] / args.gas_limit:.1f}% |")


if __name__ == "__main__":
    main()
