"""Bad input to `gradmesh` ends in one clear line and exit 2, never a hang or a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.cli.main import main
from node.errors import ConfigError
from validator.errors import StateError, StateMismatchError, ValidatorError
from validator.state import ValidatorState

CONTRACT = "0x" + "5f" * 20
DEAD_RPC = "http://127.0.0.1:1"  # nothing listens on port 1


# --- devnet sizes --------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["--windows", "0"], "windows must be at least 1, got 0"),
    (["--windows", "-3"], "windows must be at least 1, got -3"),
    (["--miners", "0"], "miners must be at least 1, got 0"),
    (["--miners", "-1"], "miners must be at least 1, got -1"),
])
def test_devnet_refuses_an_empty_network(argv: list[str], message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devnet", *argv, "--data-dir", str(tmp_path / "devnet")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradmesh: error:")
    assert message in err
    assert not (tmp_path / "devnet").exists()  # refused before anything started


def test_devnet_config_validates_itself() -> None:
    from node.sim.devnet import DevnetConfig

    with pytest.raises(ConfigError, match="windows"):
        DevnetConfig(windows=0)
    with pytest.raises(ConfigError, match="miners"):
        DevnetConfig(miners=0)
    assert DevnetConfig(miners=1, windows=1).windows == 1


# --- an RPC endpoint that is not there --------------------------------------------------------
def test_chain_status_against_a_dead_endpoint_fails_fast_naming_it() -> None:
    # the failure condition is the subprocess timeout, not a timing assertion
    result = subprocess.run([sys.executable, "-m", "node.cli", "chain", "status",
                             "--rpc", DEAD_RPC, "--contract", CONTRACT],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("gradmesh: error:")
    assert DEAD_RPC in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [
    ["chain", "deploy", "--rpc", DEAD_RPC, "--key", "{key}"],
    ["register", "--rpc", DEAD_RPC, "--contract", CONTRACT, "--key", "{key}",
     "--role", "miner", "--stake", "1ether", "--peer-id", "p"],
])
def test_one_shot_chain_commands_name_a_dead_endpoint(argv: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from node.runtime.keys import new_identity, write_key_file

    key = tmp_path / "k.key"
    write_key_file(key, new_identity())
    assert main([a.replace("{key}", str(key)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradmesh: error:")
    assert DEAD_RPC in err


# --- validator state of another run -----------------------------------------------------------
def test_validator_state_of_another_run_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "validator.sqlite"
    ValidatorState(path, "run-a").close()
    with pytest.raises(StateMismatchError) as info:
        ValidatorState(path, "run-b")
    assert isinstance(info.value, StateError)
    assert isinstance(info.value, ValidatorError)
    assert (info.value.found, info.value.expected) == ("run-a", "run-b")
    for text in ("'run-a'", "'run-b'", str(path)):
        assert text in str(info.value)
    ValidatorState(path, "run-a").close()  # its own run still opens it


def test_validator_state_that_is_not_a_database_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "validator.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError, match="not a usable SQLite database"):
        ValidatorState(path, "run-a")


def test_validator_on_another_runs_data_dir_exits_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ValidatorState(data / "validator.sqlite", "run-a").close()
    code = main(["validator", "--dev-account", "2", "--rpc", DEAD_RPC, "--contract", CONTRACT,
                 "--data-dir", str(data), "--run", "run-b", "--seq-len", "32"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("gradmesh: error:")
    for text in ("'run-a'", "'run-b'", str(data / "validator.sqlite")):
        assert text in err
    assert "Traceback" not in err


def test_devnet_starts_from_a_fresh_folder_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    from node.sim.devnet import MARKER, Devnet, DevnetConfig

    own = tmp_path / "devnet"
    legacy = tmp_path / "legacy"  # an earlier version's devnet folder, without the marker
    (legacy / "validator-0").mkdir(parents=True)
    Devnet(DevnetConfig(data_dir=legacy)).fresh_data_dir()
    assert sorted(p.name for p in legacy.iterdir()) == [MARKER]
    Devnet(DevnetConfig(data_dir=own)).fresh_data_dir()
    (own / "miner-0").mkdir()
    (own / "miner-0" / "theta.bin").write_bytes(b"an earlier devnet's state")
    Devnet(DevnetConfig(data_dir=own)).fresh_data_dir()
    assert sorted(p.name for p in own.iterdir()) == [MARKER]  # the old state is gone
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not made by a devnet"):
        Devnet(DevnetConfig(data_dir=foreign)).fresh_data_dir()
    assert (foreign / "notes.txt").read_text() == "keep me"
