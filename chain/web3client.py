"""`ChainClient` over web3: the only module (with chain/launch.py) importing web3.

Transactions are signed once and the same bytes are re-sent until a receipt
appears, so an RPC outage in the middle of a submission can neither lose nor
duplicate it (a second copy has the same nonce and hash). Contract reverts are
decoded from the ABI's custom errors into the typed classes of chain/errors.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from eth_abi import decode as abi_decode
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    MethodUnavailable,
    ProviderConnectionError,
    RequestTimedOut,
    TransactionNotFound,
    Web3RPCError,
)

from chain.artifact import load_artifact
from chain.client import ChainParams, Contribution, MinerSlot, PeerInfo, Role
from chain.errors import (
    ChainError,
    ChainUnavailableError,
    ContractRevertError,
    TransactionFailedError,
    revert_error,
)

T = TypeVar("T")
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, ProviderConnectionError, RequestTimedOut, TimeoutError,
)  # requests' ConnectionError and Timeout are OSErrors


@dataclass(frozen=True)
class RetryPolicy:
    deadline_s: float = 60.0
    first_delay_s: float = 0.1
    max_delay_s: float = 2.0


def error_selectors(abi: Sequence[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    """4-byte selector -> (error name, argument types) for every custom error."""
    table = {}
    for entry in abi:
        if entry.get("type") == "error":
            types = [i["type"] for i in entry.get("inputs", [])]
            selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
            table[selector] = (entry["name"], types)
    return table


def _revert_data(exc: BaseException) -> bytes | None:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    if isinstance(data, bytes):
        return data
    return None


class Web3ChainClient:
    """A `ChainClient` signing with one local key against a deployed contract."""

    def __init__(self, w3: Web3, contract_address: str, private_key: bytes | str, *,
                 retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        abi = load_artifact()["abi"]
        self._w3 = w3
        self._contract = w3.eth.contract(address=to_checksum_address(contract_address), abi=abi)
        self._account = Account.from_key(private_key)
        self._errors = error_selectors(abi)
        self._retry, self._sleep, self._clock = retry, sleep, clock
        self._nonce: int | None = None
        self._lock = threading.Lock()
        self._chain_id: int | None = None
        self._genesis: int | None = None
        self._estimate_at: str | None = "pending"
        self._endpoint = str(getattr(getattr(w3, "provider", None), "endpoint_uri", None)
                             or "endpoint")

    @classmethod
    def connect(cls, rpc_url: str, contract_address: str, private_key: bytes | str, *,
                timeout: float | tuple[float, float] = 10.0,
                **kwargs: Any) -> Web3ChainClient:
        """`timeout`: seconds per request, or (connect, read) seconds."""
        provider = Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout},
                                     exception_retry_configuration=None)
        return cls(Web3(provider), contract_address, private_key, **kwargs)

    @property
    def address(self) -> str:
        return str(self._account.address)

    @property
    def contract_address(self) -> str:
        return str(self._contract.address)

    # --- plumbing ----------------------------------------------------------------
    def _with_retry(self, action: Callable[[], T], what: str) -> T:
        deadline = self._clock() + self._retry.deadline_s
        delay = self._retry.first_delay_s
        while True:
            try:
                return action()
            except _TRANSIENT as exc:
                if self._clock() + delay > deadline:
                    raise ChainUnavailableError(
                        f"{what}: RPC {self._endpoint} unavailable ({exc})") from exc
                self._sleep(delay)
                delay = min(delay * 2, self._retry.max_delay_s)

    def _decode_revert(self, exc: BaseException) -> ChainError:
        data = _revert_data(exc)
        if data and data[:4] in self._errors:
            name, types = self._errors[data[:4]]
            try:
                values = tuple(abi_decode(types, data[4:]))
            except Exception:  # malformed revert data still names the error
                values = ()
            return revert_error(name, values)
        if isinstance(exc, ContractPanicError):
            return ContractRevertError("Panic", (), f"contract panicked: {exc}")
        return ContractRevertError("Revert", (), f"contract reverted: {exc}")

    def _view(self, name: str, *args: Any) -> Any:
        fn = self._contract.functions[name](*args)
        try:
            return self._with_retry(lambda: fn.call(), name)
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._decode_revert(exc) from exc

    def _next_nonce(self) -> int:
        if self._nonce is None:
            self._nonce = self._with_retry(
                lambda: self._w3.eth.get_transaction_count(self._account.address, "pending"),
                "nonce")
        return self._nonce

    def _transact(self, name: str, *args: Any, value: int = 0) -> Any:
        """Send one transaction and return its receipt; typed error on revert."""
        fn = self._contract.functions[name](*args)
        with self._lock:
            sender = {"from": self._account.address, "value": value}
            try:
                gas = self._with_retry(lambda: self._estimate(fn, sender), f"{name} gas")
            except (ContractCustomError, ContractLogicError) as exc:
                raise self._decode_revert(exc) from exc
            if self._chain_id is None:
                self._chain_id = self._with_retry(lambda: self._w3.eth.chain_id, "chain id")
            tx = fn.build_transaction(cast(Any, {
                **sender, "nonce": self._next_nonce(), "chainId": self._chain_id,
                "gas": gas + gas // 4 + 21_000,
                "gasPrice": self._with_retry(lambda: self._w3.eth.gas_price, "gas price"),
            }))
            signed = Account.sign_transaction(tx, self._account.key)
            receipt = self._submit(signed.raw_transaction, signed.hash, name)
            self._nonce = tx["nonce"] + 1
        if receipt["status"] != 1:
            self._raise_failed(fn, sender, receipt, name)
        return receipt

    def _estimate(self, fn: Any, sender: dict[str, Any]) -> int:
        # estimate in the context of the block the transaction will land in: at a
        # window edge "latest" can still be the previous phase (anvil); the
        # in-process EVM has no "pending" here but already estimates that way
        if self._estimate_at is not None:
            try:
                return int(fn.estimate_gas(cast(Any, sender), block_identifier=self._estimate_at))
            except MethodUnavailable:
                self._estimate_at = None
        return int(fn.estimate_gas(cast(Any, sender)))

    def _submit(self, raw: bytes, tx_hash: bytes, name: str) -> Any:
        """Send `raw` until its receipt exists; resending the same bytes is harmless."""
        deadline = self._clock() + self._retry.deadline_s
        delay = self._retry.first_delay_s
        while True:
            try:
                receipt = self._receipt(tx_hash)
                if receipt is not None:
                    return receipt
                try:
                    self._w3.eth.send_raw_transaction(raw)
                except Web3RPCError as exc:
                    if not _already_sent(exc):
                        self._nonce = None  # re-read the account's nonce next time
                        raise ChainError(f"{name}: node refused the transaction: {exc}") from exc
                receipt = self._receipt(tx_hash)
                if receipt is not None:
                    return receipt
            except _TRANSIENT:
                pass
            if self._clock() > deadline:
                self._nonce = None
                raise ChainUnavailableError(
                    f"{name}: no receipt for 0x{tx_hash.hex()} from {self._endpoint} in time")
            self._sleep(delay)
            delay = min(delay * 2, self._retry.max_delay_s)

    def _receipt(self, tx_hash: bytes) -> Any:
        try:
            return self._w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    def _raise_failed(self, fn: Any, sender: dict[str, Any], receipt: Any, name: str) -> None:
        try:  # replay at the receipt's block to recover the reason
            fn.call(sender, block_identifier=receipt["blockNumber"])
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._decode_revert(exc) from exc
        raise TransactionFailedError(f"{name}: transaction failed (status 0)")

    # --- ChainClient -----------------------------------------------------------------
    def block_number(self) -> int:
        return int(self._with_retry(lambda: self._w3.eth.block_number, "block number"))

    def params(self) -> ChainParams:
        return ChainParams(*self._view("getParams"))

    def run_spec_hash(self) -> bytes:
        return bytes(self._view("runSpecHash"))

    def genesis_block(self) -> int:
        if self._genesis is None:  # immutable in the contract
            self._genesis = int(self._view("genesisBlock"))
        return self._genesis

    def current_window(self) -> int:
        return int(self._view("currentWindow"))

    def current_epoch(self) -> int:
        return int(self._view("currentEpoch"))

    def register(self, role: Role, peer_id: bytes, stake: int) -> int:
        self._transact("register", int(role), peer_id, value=stake)
        return self.role_of(self.address).uid

    def add_stake(self, amount: int) -> None:
        self._transact("addStake", value=amount)

    def request_unstake(self) -> None:
        self._transact("requestUnstake")

    def withdraw_stake(self) -> None:
        self._transact("withdrawStake")

    def commit_contribution(self, window: int, digest: bytes) -> None:
        self._transact("commitContribution", window, digest)

    def contribution_of(self, window: int, miner: str) -> Contribution:
        digest, block = self._view("contributionOf", window, to_checksum_address(miner))
        return Contribution(bytes(digest), int(block))

    def commit_weights(self, epoch: int, commitment: bytes) -> None:
        self._transact("commitWeights", epoch, commitment)

    def reveal_weights(self, epoch: int, uids: Sequence[int], weights: Sequence[int],
                       salt: bytes) -> None:
        self._transact("revealWeights", epoch, list(uids), list(weights), salt)

    def settle(self, epoch: int) -> None:
        self._transact("settle", epoch)

    def claim(self) -> int:
        before = self.balance_of(self.address)
        self._transact("claim")
        return before

    def role_of(self, address: str) -> PeerInfo:
        role, uid, stake, active = self._view("roleOf", to_checksum_address(address))
        return PeerInfo(address=to_checksum_address(address), role=Role(role), uid=int(uid),
                        stake=int(stake), active=bool(active))

    def miners(self) -> list[MinerSlot]:
        slots = []
        for uid in range(int(self._view("minerCount"))):
            addr, stake, registered, peer_id = self._view("minerAt", uid)
            slots.append(MinerSlot(uid=uid, address=to_checksum_address(addr), stake=int(stake),
                                   registered_window=int(registered), peer_id=bytes(peer_id)))
        return slots

    def aggregation_set(self) -> list[tuple[int, str]]:
        uids, addrs = self._view("aggregationSet")
        return [(int(u), to_checksum_address(a)) for u, a in zip(uids, addrs, strict=True)]

    def last_consensus(self) -> tuple[int, list[int]]:
        epoch, weights = self._view("lastConsensus")
        return int(epoch), [int(w) for w in weights]

    def balance_of(self, address: str) -> int:
        return int(self._view("balanceOf", to_checksum_address(address)))

    def emission_pool(self) -> int:
        return int(self._view("emissionPool"))

    def carried(self) -> int:
        return int(self._view("carried"))

    def is_settled(self, epoch: int) -> bool:
        return bool(self._view("settled", epoch))

    def commitment_of(self, epoch: int, validator: str) -> bytes:
        return bytes(self._view("commitmentOf", epoch, to_checksum_address(validator)))

    def has_revealed(self, epoch: int, validator: str) -> bool:
        return bool(self._view("revealed", epoch, to_checksum_address(validator)))


def _already_sent(exc: Web3RPCError) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("already known", "nonce too low", "already imported",
                                   "known transaction"))
