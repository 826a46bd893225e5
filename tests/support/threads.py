"""A module-scoped, autouse fixture: one torch thread while the module's tests run.

The tiny model's kernels are far too small to share out: on a busy machine torch's
thread pool makes each training step ~20x slower. Restored afterwards. Import it
into a test module (`from tests.support.threads import one_thread  # noqa: F401`)
and it applies to every test there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
