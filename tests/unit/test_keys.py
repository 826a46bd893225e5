from __future__ import annotations

import stat
from pathlib import Path

import pytest

from node.errors import InsecureKeyFileError, KeyFileError
from node.runtime.keys import load_key_file, load_or_create_key, write_key_file
from tests.support.keys import identity


def test_key_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "miner.key"
    write_key_file(path, identity(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path) == identity(1)


def test_existing_key_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "miner.key"
    write_key_file(path, identity(1))
    with pytest.raises(KeyFileError, match="refusing"):
        write_key_file(path, identity(2))
    assert load_key_file(path) == identity(1)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_group_or_world_accessible_key_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "miner.key"
    write_key_file(path, identity(1))
    path.chmod(mode)
    with pytest.raises(InsecureKeyFileError, match="chmod 600"):
        load_key_file(path)


@pytest.mark.parametrize("text", ["hello", "0x" + "00" * 32, "\xff\xfe", "0x" + "ab" * 31])
def test_malformed_key_file_gives_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "miner.key"
    path.write_text(text, encoding="latin-1")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=str(path.name)):
        load_key_file(path)


def test_missing_key_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key_file(tmp_path / "absent.key")
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key_file(tmp_path / "dir.key")


def test_load_or_create_creates_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "node.key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first
