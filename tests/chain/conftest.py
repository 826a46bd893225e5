"""Fixtures for the contract suite: one chain per backend per session, a fresh
contract per test (deploying is cheap; starting a chain is not)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from chain.artifact import load_artifact
from chain.launch import AnvilChain, EmbeddedChain, find_anvil

BASE_PARAMS: dict[str, int] = {
    "blocksPerWindow": 4,
    "windowsPerEpoch": 4,
    "revealWindows": 2,
    "minStake": 1_000,
    "maxMiners": 8,
    "maxValidators": 5,
    "immunityWindows": 2,
    "unstakeCooldownWindows": 3,
    "emissionPerEpoch": 1_000_003,  # awkward on purpose: remainders must appear
    "validatorShareBps": 1_800,
    "aggregationSize": 3,
}


@pytest.fixture(scope="session", params=["embedded", "anvil"])
def chain(request: pytest.FixtureRequest) -> Iterator[EmbeddedChain | AnvilChain]:
    if request.param == "embedded":
        c: EmbeddedChain | AnvilChain = EmbeddedChain(num_accounts=20)
    else:
        if find_anvil() is None:
            pytest.skip("anvil binary not installed (run `npm install --prefix chain`)")
        c = AnvilChain(num_accounts=20)
    try:
        yield c
    finally:
        c.close()


def _type_str(inp: Mapping[str, Any]) -> str:
    t = str(inp["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(_type_str(c) for c in inp["components"]) + ")" + t[5:]
    return t


def error_table(abi: Sequence[Mapping[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    table = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        types = [_type_str(i) for i in item["inputs"]]
        sig = f"{item['name']}({','.join(types)})"
        table[keccak(text=sig)[:4]] = (item["name"], types)
    return table


ERRORS = error_table(load_artifact()["abi"])


def decode_revert(exc: BaseException) -> tuple[str, tuple[Any, ...]]:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):  # some nodes nest it
        data = data.get("data")
    assert isinstance(data, str), f"no revert data in {exc!r}"
    assert data.startswith("0x"), f"no revert data in {exc!r}"
    raw = bytes.fromhex(data[2:])
    name, types = ERRORS[raw[:4]]
    values = abi_decode(types, raw[4:])
    return name, tuple(
        to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)
    )


@dataclass
class Net:
    """A freshly deployed contract plus helpers that hide block/window bookkeeping."""

    chain: EmbeddedChain | AnvilChain
    params: dict[str, int]
    address: str
    contract: Any
    genesis: int
    accounts: list[Any] = field(default_factory=list)

    @property
    def w3(self) -> Any:
        return self.chain.w3

    # ---- transactions
    def tx(self, fn: Any, acct: Any, value: int = 0) -> Any:
        tx = fn.build_transaction({"from": acct.address, "value": value})
        receipt = self.chain.send(tx, acct)
        assert receipt["status"] == 1
        return receipt

    def fails(self, fn: Any, acct: Any, value: int = 0) -> tuple[str, tuple[Any, ...]]:
        """The call must revert; return the decoded custom error (name, args)."""
        with pytest.raises(ContractLogicError) as ei:
            self.tx(fn, acct, value)
        return decode_revert(ei.value)

    def events(self, receipt: Any, name: str) -> list[Any]:
        return list(getattr(self.contract.events, name)().process_receipt(receipt, errors=DISCARD))

    def fee(self, receipt: Any) -> int:
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])

    # ---- time
    def next_tx_window(self) -> int:
        latest = int(self.w3.eth.block_number)
        return (latest + 1 - self.genesis) // self.params["blocksPerWindow"]

    def advance_to_window(self, window: int) -> None:
        """Mine so that both the latest block and the next transaction are in ``window``
        (never goes back). anvil estimates gas in the context of the latest block while
        py-evm uses the pending one, so the latest block must already be in the window."""
        target_block = self.genesis + window * self.params["blocksPerWindow"]
        n = target_block - self.w3.eth.block_number
        if n > 0:
            self.chain.mine(n)

    def advance_to_next_epoch(self) -> int:
        wpe = self.params["windowsPerEpoch"]
        w = self.next_tx_window()
        epoch = -(-w // wpe)  # next epoch boundary at or after w
        self.advance_to_window(epoch * wpe)
        return epoch

    def to_reveal_phase(self, epoch: int) -> None:
        self.advance_to_window((epoch + 1) * self.params["windowsPerEpoch"])

    def to_settle_phase(self, epoch: int) -> None:
        p = self.params
        self.advance_to_window((epoch + 1) * p["windowsPerEpoch"] + p["revealWindows"])

    # ---- protocol helpers
    def register(
        self, acct: Any, role: int, stake: int | None = None, peer: bytes | None = None
    ) -> int:
        stake = self.params["minStake"] if stake is None else stake
        peer = peer if peer is not None else b"peer-" + acct.address[2:10].encode()
        self.tx(self.contract.functions.register(role, peer), acct, stake)
        return int(self.contract.functions.roleOf(acct.address).call()[1])

    def commitment(
        self, acct: Any, epoch: int, uids: Sequence[int], weights: Sequence[int], salt: bytes
    ) -> bytes:
        from eth_abi import encode

        return keccak(
            encode(
                ["address", "uint64", "uint16[]", "uint32[]", "bytes32"],
                [acct.address, epoch, list(uids), list(weights), salt],
            )
        )

    def run_epoch(
        self, votes: Mapping[Any, tuple[Sequence[int], Sequence[int]]]
    ) -> tuple[int, Any]:
        """Commit, reveal and settle one epoch with ``votes`` {validator: (uids, weights)}."""
        epoch = self.advance_to_next_epoch()
        f = self.contract.functions
        for i, (v, (uids, weights)) in enumerate(votes.items()):
            salt = keccak(text=f"salt-{epoch}-{i}")
            self.tx(f.commitWeights(epoch, self.commitment(v, epoch, uids, weights, salt)), v)
        self.to_reveal_phase(epoch)
        for i, (v, (uids, weights)) in enumerate(votes.items()):
            salt = keccak(text=f"salt-{epoch}-{i}")
            self.tx(f.revealWeights(epoch, list(uids), list(weights), salt), v)
        self.to_settle_phase(epoch)
        receipt = self.tx(f.settle(epoch), self.accounts[0])
        return epoch, receipt


def deploy_net(chain: EmbeddedChain | AnvilChain, **overrides: int) -> Net:
    params = {**BASE_PARAMS, **overrides}
    pool = overrides.pop("pool", None) if "pool" in overrides else None
    params.pop("pool", None)
    value = pool if pool is not None else 7 * params["emissionPerEpoch"] + 5
    address = chain.deploy(params, value, chain.accounts[0])
    contract = chain.contract(address)
    return Net(
        chain=chain,
        params=params,
        address=address,
        contract=contract,
        genesis=int(contract.functions.genesisBlock().call()),
        accounts=list(chain.accounts),
    )


@pytest.fixture
def net(chain: EmbeddedChain | AnvilChain) -> Net:
    return deploy_net(chain)
