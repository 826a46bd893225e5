"""The RPC endpoint vanishes mid-submission and comes back (real anvil, real sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chain.client import Role
from chain.errors import ChainUnavailableError
from chain.launch import find_anvil
from chain.web3client import RetryPolicy, Web3ChainClient
from tests.support.chains import Web3Harness
from tests.support.tcpproxy import CuttableProxy

pytestmark = pytest.mark.skipif(find_anvil() is None,
                                reason="anvil not installed: npm install --prefix chain")


@pytest.fixture
def anvil() -> Iterator[Web3Harness]:
    harness = Web3Harness("anvil")
    yield harness
    harness.close()


@pytest.fixture
def proxy(anvil: Web3Harness) -> Iterator[CuttableProxy]:
    port = int(anvil.launcher.rpc_url.rsplit(":", 1)[1])
    p = CuttableProxy(port)
    yield p
    p.close()


def test_outage_during_submission_sends_once_and_confirms(anvil: Web3Harness,
                                                         proxy: CuttableProxy) -> None:
    account = anvil.launcher.accounts[3]
    naps: list[float] = []

    def sleep_then_restore(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:  # the endpoint is back after a few failed retries
            proxy.restore()

    client = Web3ChainClient.connect(proxy.url, anvil.contract, account.key,
                                     retry=RetryPolicy(deadline_s=30), sleep=sleep_then_restore)
    proxy.cut_after(b"eth_sendRawTransaction")
    uid = client.register(Role.MINER, b"peer-x", 1000)

    assert proxy.triggered.is_set(), "the outage was never injected"
    assert len(naps) >= 3  # the client really did wait through the outage
    w3 = anvil.launcher.w3
    assert w3.eth.get_transaction_count(account.address) == 1  # sent once, mined once
    assert [m.address for m in client.miners()] == [account.address]
    assert client.role_of(account.address).uid == uid
    client.add_stake(5)  # the nonce bookkeeping is still right afterwards
    assert w3.eth.get_transaction_count(account.address) == 2
    assert client.role_of(account.address).stake == 1005


def test_endpoint_gone_for_good_raises_a_typed_error(anvil: Web3Harness,
                                                     proxy: CuttableProxy) -> None:
    client = Web3ChainClient.connect(proxy.url, anvil.contract, anvil.launcher.accounts[3].key,
                                     retry=RetryPolicy(deadline_s=0.5, first_delay_s=0.05))
    proxy.cut()
    with pytest.raises(ChainUnavailableError):
        client.register(Role.MINER, b"peer-x", 1000)
    with pytest.raises(ChainUnavailableError):
        client.current_window()
