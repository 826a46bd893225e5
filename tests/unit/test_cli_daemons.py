"""The service commands refuse bad configuration with a clear message and exit 2."""

from __future__ import annotations

import pytest

from node.cli.main import main


@pytest.mark.parametrize(("argv", "message"), [
    (["miner"], "give --key PATH"),
    (["miner", "--dev-account", "1"], "give --rpc URL and --contract ADDRESS"),
    (["validator", "--dev-account", "2", "--rpc", "http://127.0.0.1:1"], "--contract"),
    (["miner", "--dev-account", "1", "--checkpoint-every", "0"], "checkpoint_every >= 1"),
    (["validator", "--dev-account", "2", "--gather-grace", "-1"], "gather_grace"),
])
def test_missing_configuration_is_a_clear_error(argv: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["miner", "--http", "no-port-here"],
    ["devnet", "--miners", "three"],
    ["devnet", "--chain", "mainnet"],
])
def test_malformed_flags_are_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_every_service_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("miner", "validator", "relay", "dashboard", "devnet"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "usage: gradmesh " + command in capsys.readouterr().out
