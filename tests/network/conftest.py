"""What the network tests share: a cluster of real libp2p hosts on 127.0.0.1, closed
after the test (a module may define its own `cluster`, as the contract suite does)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.mesh import Cluster


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster("p2p")
    try:
        yield c
    finally:
        await c.close()
