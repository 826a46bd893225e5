"""`add_flag`: one declaration per flag, with its GRADMESH_* fallback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from node.cli.common import add_flag, add_node_flags, build_spec, host_port, parse_amount
from node.cli.main import build_parser
from node.errors import ConfigError


def parser_with(**flag: object) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_flag(p, "--x", **flag)  # type: ignore[arg-type]
    return p


def test_the_environment_is_the_default_and_the_command_line_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = parser_with(env="TEST_X", type=int, default=5)
    assert p.parse_args([]).x == 5
    monkeypatch.setenv("GRADMESH_TEST_X", "7")
    p = parser_with(env="TEST_X", type=int, default=5)
    assert p.parse_args([]).x == 7  # converted by `type`, like a command-line value
    assert p.parse_args(["--x", "9"]).x == 9
    monkeypatch.setenv("GRADMESH_TEST_X", "")
    assert parser_with(env="TEST_X", type=int, default=5).parse_args([]).x == 5  # empty: unset


def test_required_unless_the_environment_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        parser_with(env="TEST_X", required=True).parse_args([])
    monkeypatch.setenv("GRADMESH_TEST_X", "from-env")
    assert parser_with(env="TEST_X", required=True).parse_args([]).x == "from-env"


def test_lists_split_on_commas_and_flags_add_to_them(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parser_with(env="TEST_X", action="append").parse_args([]).x == []
    monkeypatch.setenv("GRADMESH_TEST_X", "a,,b")
    p = parser_with(env="TEST_X", action="append")
    assert p.parse_args([]).x == ["a", "b"]
    assert p.parse_args(["--x", "c"]).x == ["a", "b", "c"]
    assert p.parse_args([]).x == ["a", "b"]  # the default list is not mutated


def test_help_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser_with(env="TEST_X", help="what x is").parse_args(["--help"])
    assert "what x is [env GRADMESH_TEST_X]" in capsys.readouterr().out


def test_node_flags_read_the_environment(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("GRADMESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GRADMESH_HTTP", "127.0.0.1:9109")
    monkeypatch.setenv("GRADMESH_BOOTSTRAP",
                       "/ip4/127.0.0.1/tcp/1/p2p/a,/ip4/127.0.0.1/tcp/2/p2p/b")
    monkeypatch.setenv("GRADMESH_STAKE", "2ether")
    monkeypatch.setenv("GRADMESH_CHECKPOINT_EVERY", "20")
    p = argparse.ArgumentParser()
    add_node_flags(p)
    args = p.parse_args([])
    assert args.data_dir == tmp_path
    assert args.http == ("127.0.0.1", 9109)
    assert len(args.bootstrap) == 2
    assert args.stake == 2 * 10**18
    assert (args.checkpoint_every, args.gather_grace) == (20, 3.0)


def test_link_rates_reach_the_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    """--uplink-mbit / --downlink-mbit (or their env) become the mesh's byte rates: a
    declared 10 Mbit/s downlink keeps 6 piece requests open, 2.5 Mbit/s up serves one
    piece at a time; a negative rate is a usage error."""
    from node.cli.common import build_mesh
    from tests.support.keys import identity

    monkeypatch.setenv("GRADMESH_DOWNLINK_MBIT", "10")
    p = argparse.ArgumentParser()
    add_node_flags(p)
    mesh = build_mesh(p.parse_args(["--uplink-mbit", "2.5"]), identity(1), "rates")
    assert (mesh._cfg.upload_rate, mesh._cfg.download_rate) == (2.5e6 / 8, 10e6 / 8)
    assert mesh._fetch_slots.limit == 6
    with pytest.raises(SystemExit):
        p.parse_args(["--uplink-mbit", "-1"])


def test_the_overlap_flag_reaches_the_run_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["miner"])
    assert build_spec(args).overlap is False
    assert build_spec(build_parser().parse_args(["miner", "--overlap", "on"])).lag == 1
    monkeypatch.setenv("GRADMESH_OVERLAP", "on")
    assert build_spec(build_parser().parse_args(["validator"])).overlap is True


def test_the_public_second_moment_flag_reaches_the_inner_optimizer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_spec(build_parser().parse_args(["miner"])).public_second_moment is None
    spec = build_spec(build_parser().parse_args(["miner", "--public-second-moment", "0.9"]))
    assert spec.inner_config().public_second_moment == 0.9
    monkeypatch.setenv("GRADMESH_PUBLIC_SECOND_MOMENT", "0.7")
    assert build_spec(build_parser().parse_args(["validator"])).public_second_moment == 0.7
    # it needs the inner reset and a decay below 1: typed errors, not a crash later
    with pytest.raises(ConfigError, match="public_second_moment"):
        build_spec(build_parser().parse_args(["miner", "--inner-reset", "off"]))
    monkeypatch.delenv("GRADMESH_PUBLIC_SECOND_MOMENT")
    with pytest.raises(ConfigError, match="public_second_moment"):
        build_spec(build_parser().parse_args(["miner", "--public-second-moment", "1"]))


def test_every_command_builds_with_the_environment_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("RPC", "http://127.0.0.1:8545"), ("CONTRACT", "0x" + "ab" * 20),
                        ("KEY", "k.key"), ("PEER_ID", "p")):
        monkeypatch.setenv(f"GRADMESH_{name}", value)
    args = build_parser().parse_args(["register", "--role", "miner", "--stake", "1"])
    assert (args.rpc, args.key, args.peer_id) == ("http://127.0.0.1:8545", Path("k.key"), "p")
    args = build_parser().parse_args(["chain", "status"])
    assert args.contract == "0x" + "ab" * 20


def test_parsers_of_values() -> None:
    assert host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_amount("3 gwei") == 3 * 10**9
    with pytest.raises(argparse.ArgumentTypeError):
        host_port("no-port")
