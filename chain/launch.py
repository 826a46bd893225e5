"""Local chains for tests, benchmarks and single-machine runs.

Two launchers share one shape:

* :class:`EmbeddedChain` - an in-process EVM (web3's ``EthereumTesterProvider`` on
  py-evm). Every transaction is mined into its own block.
* :class:`AnvilChain` - a child ``anvil`` process (from the npm package pinned in
  chain/package.json) bound to 127.0.0.1 on a free port. Auto-mines too.

Both derive the same funded accounts from the same mnemonic, expose ``w3``, ``accounts``
(eth-account ``LocalAccount`` objects, which carry their private keys), ``mine(n)``,
``deploy(params, value, deployer_key)`` and ``close()``, and work as context managers.
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from chain.artifact import CHAIN_DIR, load_artifact
from chain.errors import LauncherError

# The well-known development mnemonic (also anvil's default); NEVER use it for real funds.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_HD_PREFIX = "m/44'/60'/0'/0"
DEFAULT_ACCOUNTS = 20
DEFAULT_BALANCE_ETH = 1_000_000
DEFAULT_GAS_LIMIT = 30_000_000

PARAM_FIELDS: tuple[str, ...] = (
    "blocksPerWindow",
    "windowsPerEpoch",
    "revealWindows",
    "minStake",
    "maxMiners",
    "maxValidators",
    "immunityWindows",
    "unstakeCooldownWindows",
    "emissionPerEpoch",
    "validatorShareBps",
    "aggregationSize",
)


def dev_accounts(count: int = DEFAULT_ACCOUNTS) -> list[LocalAccount]:
    """The first ``count`` accounts of :data:`DEV_MNEMONIC` (same as anvil's)."""
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"{DEV_HD_PREFIX}/{i}")
        for i in range(count)
    ]


def params_tuple(params: Mapping[str, int]) -> tuple[int, ...]:
    """Order a params dict as the contract's ``Params`` struct."""
    missing = [f for f in PARAM_FIELDS if f not in params]
    extra = sorted(set(params) - set(PARAM_FIELDS))
    if missing or extra:
        raise ValueError(f"bad params: missing={missing} unknown={extra}")
    return tuple(int(params[f]) for f in PARAM_FIELDS)


def _revert_bytes(message: str) -> bytes | None:
    """Recover revert data from eth-tester's "execution reverted: b'...'" message."""
    prefix = "execution reverted: "
    if not message.startswith(prefix):
        return None
    rest = message[len(prefix) :]
    if rest[:2] in ("b'", 'b"'):
        try:
            value = ast.literal_eval(rest)
        except (ValueError, SyntaxError):
            return None
        return value if isinstance(value, bytes) else None
    # a decoded Error(string) reason: re-encode it the standard way
    return bytes.fromhex("08c379a0") + abi_encode(["string"], [rest])


def _make_tester_provider(tester: Any) -> Any:
    """EthereumTesterProvider whose reverts come back as JSON-RPC errors carrying the raw
    revert data (code 3), exactly like a real node, so web3 raises ContractCustomError /
    ContractLogicError with ``.data`` on both backends."""
    from eth_tester.exceptions import TransactionFailed
    from web3.providers.eth_tester import EthereumTesterProvider

    class _Provider(EthereumTesterProvider):
        def make_request(self, method: Any, params: Any) -> Any:
            try:
                return super().make_request(method, params)
            except TransactionFailed as e:
                data = _revert_bytes(str(e.args[0]) if e.args else "")
                if data is None:
                    raise
                return {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "error": {
                        "code": 3,
                        "message": "execution reverted",
                        "data": "0x" + data.hex(),
                    },
                }

    return _Provider(tester)


class _ChainBase:
    w3: Web3
    accounts: list[LocalAccount]

    def _key_of(self, key: Any) -> LocalAccount:
        if isinstance(key, LocalAccount):
            return key
        acct: LocalAccount = Account.from_key(key)
        return acct

    def send(self, tx: dict[str, Any], key: Any) -> Any:
        """Sign ``tx`` locally with ``key``, send it, wait for and return the receipt."""
        acct = self._key_of(key)
        tx = dict(tx)
        tx.setdefault("from", acct.address)
        tx.setdefault("chainId", self.w3.eth.chain_id)
        tx.setdefault("nonce", self.w3.eth.get_transaction_count(acct.address, "pending"))
        if "gas" not in tx:
            tx["gas"] = self.w3.eth.estimate_gas(tx)  # type: ignore[arg-type]
        if "gasPrice" not in tx and "maxFeePerGas" not in tx:
            base = self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0
            tx["maxPriorityFeePerGas"] = 1
            tx["maxFeePerGas"] = 2 * base + 1
        signed = acct.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)

    def deploy(self, params: Mapping[str, int], value: int = 0, deployer_key: Any = None,
               run_spec: bytes = bytes(32)) -> str:
        """Deploy the committed artifact with ``params`` (and the run spec's sha256,
        zero: none); return the contract address."""
        art = load_artifact()
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        key = deployer_key if deployer_key is not None else self.accounts[0]
        acct = self._key_of(key)
        tx = factory.constructor(params_tuple(params), run_spec).build_transaction(
            {"from": acct.address, "value": int(value)}
        )
        receipt = self.send(tx, acct)
        if receipt["status"] != 1 or not receipt.get("contractAddress"):
            raise LauncherError(f"deployment failed: {receipt}")
        return str(receipt["contractAddress"])

    def contract(self, address: str) -> Any:
        return self.w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=load_artifact()["abi"]
        )

    def mine(self, n: int = 1) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedChain(_ChainBase):
    """In-process py-evm chain; accounts are funded in genesis."""

    kind = "embedded"

    def __init__(
        self,
        num_accounts: int = DEFAULT_ACCOUNTS,
        balance_eth: int = DEFAULT_BALANCE_ETH,
        gas_limit: int = DEFAULT_GAS_LIMIT,
    ) -> None:
        from eth_tester import EthereumTester, PyEVMBackend

        self.accounts = dev_accounts(num_accounts)
        state = {
            bytes.fromhex(a.address[2:]): {
                "balance": balance_eth * 10**18,
                "storage": {},
                "code": b"",
                "nonce": 0,
            }
            for a in self.accounts
        }
        backend = PyEVMBackend(
            genesis_parameters=PyEVMBackend.generate_genesis_params(
                overrides={"gas_limit": gas_limit}
            ),
            genesis_state=state,
            mnemonic=DEV_MNEMONIC,  # so the tester's own key list (eth_call's default
            hd_path=DEV_HD_PREFIX,  # sender) is these funded accounts
        )
        self.tester = EthereumTester(backend=backend, auto_mine_transactions=True)
        self.w3 = Web3(_make_tester_provider(self.tester))
        self.gas_limit = gas_limit

    def mine(self, n: int = 1) -> None:
        if n > 0:
            self.tester.mine_blocks(n)

    def close(self) -> None:
        pass


def find_anvil() -> Path | None:
    """The anvil binary installed by ``npm install --prefix chain``, or on $PATH."""
    env = os.environ.get("GRADMESH_ANVIL")
    candidates = [Path(env)] if env else []
    # prefer the native binary shipped in the platform package (no node wrapper process
    # between us and anvil), then npm's node shim, then $PATH
    candidates.extend(
        sorted((CHAIN_DIR / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"))
    )
    candidates.append(CHAIN_DIR / "node_modules" / ".bin" / "anvil")
    on_path = shutil.which("anvil")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AnvilChain(_ChainBase):
    """A child anvil process on 127.0.0.1; stopped (only it) by :meth:`close`."""

    kind = "anvil"

    def __init__(
        self,
        num_accounts: int = DEFAULT_ACCOUNTS,
        balance_eth: int = DEFAULT_BALANCE_ETH,
        gas_limit: int = DEFAULT_GAS_LIMIT,
        startup_timeout: float = 20.0,
        binary: Path | None = None,
        port: int | None = None,
        block_time: float | None = None,
    ) -> None:
        exe = binary or find_anvil()
        if exe is None:
            raise LauncherError(
                "anvil binary not found: run `npm install --prefix chain` "
                "(or set GRADMESH_ANVIL to an anvil executable)"
            )
        self.accounts = dev_accounts(num_accounts)
        self.gas_limit = gas_limit
        self._proc: subprocess.Popen[bytes] | None = None
        last_err: Exception | None = None
        fixed_port = port
        for _attempt in range(1 if fixed_port else 3):  # a probed port can be taken meanwhile
            port = fixed_port or _free_port()
            cmd = [
                str(exe),
                "--host", "127.0.0.1",
                "--port", str(port),
                "--mnemonic", DEV_MNEMONIC,
                "--accounts", str(num_accounts),
                "--balance", str(balance_eth),
                "--gas-limit", str(gas_limit),
                "--chain-id", "31337",
                "--silent",
            ]  # fmt: skip
            if block_time:  # blocks on a clock (daemons' windows) instead of one per tx
                cmd += ["--block-time", str(block_time)]
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self.rpc_url = f"http://127.0.0.1:{port}"
            self.w3 = Web3(Web3.HTTPProvider(self.rpc_url, request_kwargs={"timeout": 30}))
            try:
                self._wait_ready(startup_timeout)
                return
            except LauncherError as e:
                last_err = e
                self._stop()
        raise LauncherError(f"anvil did not start: {last_err}")

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.01
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(
                    errors="replace"
                )
                raise LauncherError(f"anvil exited with {self._proc.returncode}: {err.strip()}")
            try:
                self.w3.eth.block_number  # noqa: B018 - readiness probe
                return
            except Exception:  # connection refused while it boots
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        raise LauncherError(f"anvil did not answer eth_blockNumber within {timeout}s")

    def mine(self, n: int = 1) -> None:
        if n > 0:
            self.w3.provider.make_request("anvil_mine", [hex(n)])  # type: ignore[arg-type]

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def close(self) -> None:
        self._stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._stop()


def launch(kind: str, **kwargs: Any) -> EmbeddedChain | AnvilChain:
    """``launch("embedded")`` or ``launch("anvil")``."""
    if kind == "embedded":
        return EmbeddedChain(**kwargs)
    if kind == "anvil":
        return AnvilChain(**kwargs)
    raise ValueError(f"unknown chain kind {kind!r}")


__all__: Sequence[str] = (
    "DEV_MNEMONIC",
    "AnvilChain",
    "EmbeddedChain",
    "LauncherError",
    "dev_accounts",
    "find_anvil",
    "launch",
    "params_tuple",
)
