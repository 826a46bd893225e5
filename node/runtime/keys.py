"""Key files: a node's secp256k1 chain key on disk, owner-only."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from node.errors import InsecureKeyFileError, KeyFileError
from protocol.errors import MalformedKeyError
from protocol.identity import Identity, format_private_key, parse_private_key

KEY_FILE_MODE = 0o600
MAX_KEY_FILE_BYTES = 1024


def new_identity() -> Identity:
    while True:  # a uniformly random 32-byte string is a valid key but for ~2^-128 cases
        try:
            return Identity.from_secret(secrets.token_bytes(32))
        except MalformedKeyError:
            continue


def write_key_file(path: Path, identity: Identity, *, overwrite: bool = False) -> None:
    """Create `path` with mode 0600 and the key; refuse to replace one unless asked."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, KEY_FILE_MODE)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), KEY_FILE_MODE)  # umask or a previous file may differ
        handle.write(format_private_key(identity))


def load_key_file(path: Path) -> Identity:
    """Read a key file, refusing one that group or others can read or write."""
    try:
        info = path.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise InsecureKeyFileError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; run `chmod 600 {path}`"
        )
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is {info.st_size} bytes; a key file is under 100")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
    try:
        return parse_private_key(text)
    except MalformedKeyError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc


def load_or_create_key(path: Path) -> Identity:
    if path.exists():
        return load_key_file(path)
    identity = new_identity()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_key_file(path, identity)
    return identity
