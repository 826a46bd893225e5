"""What every test shares: the suite's two phases and one torch thread per xdist worker.

`make test` runs the suite in two passes on one command line (see the Makefile):
`--phase parallel` under pytest-xdist (one worker per core), then `--phase serial`
alone. The serial phase holds the tests whose outcome rests on the wall clock: the
devnet and process tests (`e2e/`), real hosts with rates and cut-offs (`network/`),
the container image (`containers/`), and modules marked `wallclock` (daemons with
real-time windows). A CPU shared with another worker would slow those into overrun
windows or a cut-off honest source. `--phase all` (the default) runs everything in
one pass, as plain `python -m pytest` always has.
"""

from __future__ import annotations

import os

import pytest

# shared fixtures (catch-up's peers and joiners: tests/unit/test_catchup*.py)
pytest_plugins = ["tests.support.catchup"]

SERIAL_DIRS = ("e2e", "network", "containers")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--phase", choices=("all", "parallel", "serial"), default="all",
                     help="run only the tests safe beside another worker (parallel), only "
                          "the wall-clock ones (serial), or every test (all, the default)")


def serial(item: pytest.Item) -> bool:
    """A test that must have the machine to itself (see the module docstring)."""
    parts = item.path.parts
    in_dir = len(parts) >= 2 and parts[-2] in SERIAL_DIRS and "tests" in parts
    return in_dir or item.get_closest_marker("wallclock") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    phase = config.getoption("--phase")
    if phase == "all":
        return
    wanted = phase == "serial"
    keep, dropped = [], []
    for item in items:
        (keep if serial(item) == wanted else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def pytest_configure(config: pytest.Config) -> None:
    # two workers on two cores: torch's default pool (a thread per core) in each would
    # oversubscribe the machine, and the tiny model's kernels gain nothing from it
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
