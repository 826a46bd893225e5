"""Catch-up (node/runtime/catchup.py) over the in-memory mesh, without a chain: where
it starts, what it replays and what it refuses (tests/support/catchup.py builds the
peers; the public second moment's part is tests/unit/test_catchup_public.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.mesh import MemoryNetwork
from node.mesh.base import sha256
from node.runtime.catchup import CatchUpError
from tests.support.catchup import RUN, History, MakeJoiner, Peer, make_engine, perturbed
from tests.support.keys import identity

# --- 1. a new network ----------------------------------------------------------------


async def test_a_new_network_starts_from_theta_init_at_the_next_window(
        theta_init: bytes, joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    node = joiner(network)
    node.engine.load_params(perturbed(node.engine, 0.25))  # θ_init has to be restored
    assert node.engine.digest() != theta_init
    # registered miners without any head record yet
    result = await node.catch_up([identity(7).address, identity(8).address], now=9)
    assert result.fresh is True
    assert (result.window, result.applied) == (10, 9)
    assert result.heads == {}
    assert result.text == "θ_init at window 10, replayed 0 windows, now at window 10"
    assert node.engine.digest() == theta_init == make_engine().digest()


# --- 2. checkpoint, then replay --------------------------------------------------------


async def test_a_remote_checkpoint_is_loaded_and_later_windows_are_replayed(
        theta_init: bytes, history: History, joiner: MakeJoiner) -> None:
    a, b_address = history.a, history.b_address
    node = joiner(history.network)
    result = await node.catch_up([a.address, b_address], now=6)
    assert result.fresh is False
    assert (result.window, result.applied) == (6, 5)
    assert node.engine.digest() == a.digests[6] == a.engine.digest()
    assert node.engine.digest() not in (theta_init, a.digests[4], a.digests[5])
    assert result.text == (f"checkpoint of window 4 from 0x{a.address.hex()[:8]}, "
                           "replayed 2 windows, now at window 6")
    assert set(result.heads) == {a.address}
    assert result.heads[a.address].checkpoint_window == 4
    assert result.heads[a.address].applied_window == 5


# --- 3. local against remote checkpoints ---------------------------------------------


async def test_a_newer_local_checkpoint_wins_over_an_older_remote_one(
        tmp_path: Path, history: History, joiner: MakeJoiner) -> None:
    a, b_address = history.a, history.b_address
    node = joiner(history.network, store=tmp_path)
    # θ at the start of window 5, as this node saved it before a restart
    node.engine.load_params(a.thetas[5])
    assert node.engine.digest() == a.digests[5]
    node.engine.save_local(5, {"digest": a.digests[5].hex(), "run": RUN})
    node.engine.reset()
    result = await node.catch_up([a.address, b_address], now=6)
    assert result.text == "local checkpoint of window 5, replayed 1 windows, now at window 6"
    assert (result.window, result.fresh) == (6, False)
    assert node.engine.digest() == a.digests[6]


async def test_use_local_false_takes_the_remote_checkpoint_over_a_newer_local_one(
        tmp_path: Path, history: History, joiner: MakeJoiner) -> None:
    a, b_address = history.a, history.b_address
    node = joiner(history.network, store=tmp_path)
    # a newer local checkpoint whose θ nobody else has (the node diverged)
    node.engine.load_params(perturbed(a.engine, 0.5))
    bogus = node.engine.digest()
    node.engine.save_local(7, {"digest": bogus.hex(), "run": RUN})
    node.engine.reset()

    trusted = await node.catch_up([a.address, b_address], now=7)
    assert trusted.text == "local checkpoint of window 7, replayed 0 windows, now at window 7"
    assert (trusted.window, node.engine.digest()) == (7, bogus)

    result = await node.catch_up([a.address, b_address], now=7, use_local=False)
    assert result.text == (f"checkpoint of window 4 from 0x{a.address.hex()[:8]}, "
                           "replayed 2 windows, now at window 6")
    assert result.window == 6
    assert node.engine.digest() == a.digests[6] != bogus


# --- 4. refusals -----------------------------------------------------------------------


async def test_a_checkpoint_signed_by_another_key_than_the_heads_owner_is_refused(
        joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    a = await Peer(network, 1, window=4).start()
    stranger = identity(50)
    await a.save_checkpoint(signer=stranger)  # valid signature, wrong signer
    await a.put_head()
    node = joiner(network)
    with pytest.raises(CatchUpError, match="not trusted") as err:
        await node.catch_up([a.address], now=4)
    assert stranger.address.hex() in str(err.value)
    assert f"checkpoint from 0x{a.address.hex()}" in str(err.value)
    # the same checkpoint signed by A itself is taken
    await a.save_checkpoint()
    await a.put_head()
    result = await node.catch_up([a.address], now=4)
    assert result.text == (f"checkpoint of window 4 from 0x{a.address.hex()[:8]}, "
                           "replayed 0 windows, now at window 4")


async def test_a_window_record_whose_digest_the_replay_does_not_reach_is_refused(
        joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    a = await Peer(network, 1, window=4).start()
    await a.save_checkpoint()
    await a.finish([a.contribute()], record_digest=sha256(b"not what the step gives"))
    await a.put_head()
    node = joiner(network)
    with pytest.raises(CatchUpError, match="window 4: replayed θ differs from the record"):
        await node.catch_up([a.address], now=5)
    # the replay itself happened: θ is the honest step's, just not the record's
    assert node.engine.digest() == a.digests[5]


# --- 5. the majority's record ------------------------------------------------------------


async def test_the_record_most_miners_agree_on_is_replayed(theta_init: bytes,
                                                          joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    a, b, c = [await Peer(network, n, window=3).start() for n in (1, 2, 3)]
    envelope = a.contribute()
    await a.finish([envelope])
    await b.finish([envelope])
    # the liar's record is self-consistent (replaying it reaches its digest), just not
    # what the others applied: it says the window had no contributions
    await c.finish([])
    for p in (a, b, c):
        await p.put_head()
    assert a.digests[4] == b.digests[4] != c.digests[4]
    node = joiner(network)
    # the liar is read first: taking the first record found would pick it
    result = await node.catch_up([c.address, a.address, b.address], now=2)
    assert result.text == "θ_init at window 3, replayed 1 windows, now at window 4"
    assert result.fresh is True
    assert node.engine.digest() == a.digests[4] != theta_init


# --- 6. an envelope nobody serves ------------------------------------------------------------


async def test_a_listed_envelope_that_no_holder_serves_is_an_error(joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    a = await Peer(network, 1, window=3).start()
    envelope = a.contribute()
    await a.finish([envelope], serve=False)  # applied and recorded, but never held
    await a.put_head()
    node = joiner(network)
    with pytest.raises(CatchUpError, match=f"no holder served {sha256(envelope).hex()[:16]}"):
        await node.catch_up([a.address], now=2)
