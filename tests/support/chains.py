"""Chain harnesses: the same test drives MemoryChain, the embedded EVM and anvil."""

from __future__ import annotations

from typing import Any

from chain.client import ChainClient, ChainParams

# small windows so phases move with a few blocks
TEST_PARAMS = ChainParams(
    blocks_per_window=4, windows_per_epoch=3, reveal_windows=1, min_stake=1000,
    max_miners=4, max_validators=3, immunity_windows=2, unstake_cooldown_windows=2,
    emission_per_epoch=1_000_003, validator_share_bps=2000, aggregation_size=3,
)  # fmt: skip
FUND = 10_000_019
RUN_SPEC = bytes.fromhex("5e" * 32)  # the run spec hash the test networks record


class MemoryHarness:
    kind = "memory"

    def __init__(self, params: ChainParams = TEST_PARAMS, fund: int = FUND) -> None:
        from chain.launch import dev_accounts
        from chain.memory import MemoryChain

        self.addresses = [a.address for a in dev_accounts(12)]
        self.chain = MemoryChain(params, fund, RUN_SPEC)

    def client(self, n: int) -> ChainClient:
        return self.chain.client(self.addresses[n])

    def mine(self, blocks: int) -> None:
        self.chain.mine(blocks)

    def close(self) -> None:
        pass


class Web3Harness:
    def __init__(self, kind: str, params: ChainParams = TEST_PARAMS, fund: int = FUND) -> None:
        from chain.deploy import deploy_network
        from chain.launch import AnvilChain, EmbeddedChain

        self.kind = kind
        self.launcher: Any = EmbeddedChain(12) if kind == "embedded" else AnvilChain(12)
        self.addresses = [a.address for a in self.launcher.accounts]
        self.contract = deploy_network(self.launcher.w3, self.launcher.accounts[0].key, params,
                                       fund=fund, run_spec=RUN_SPEC)
        self._clients: dict[int, ChainClient] = {}

    def client(self, n: int) -> ChainClient:
        from chain.web3client import Web3ChainClient

        if n not in self._clients:
            self._clients[n] = Web3ChainClient(self.launcher.w3, self.contract,
                                               self.launcher.accounts[n].key)
        return self._clients[n]

    def mine(self, blocks: int) -> None:
        self.launcher.mine(blocks)

    def close(self) -> None:
        self.launcher.close()


def mine_to_window(harness: Any, window: int) -> None:
    """Mine until the latest block is in `window`; the next transactions land there
    too as long as fewer than blocks_per_window of them are sent."""
    client = harness.client(0)
    if client.current_window() > window:
        raise AssertionError(f"already past window {window}")
    while client.current_window() < window:
        harness.mine(1)
