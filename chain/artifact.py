"""Access to the committed compiled contract (chain/artifacts/GradMeshNetwork.json).

The artifact is produced by ``node chain/compile.mjs`` with the solcjs version pinned in
chain/package.json and committed, so a pure-Python install needs no Solidity compiler.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CHAIN_DIR = Path(__file__).resolve().parent
CONTRACT_NAME = "GradMeshNetwork"
SOURCE_PATH = CHAIN_DIR / "contracts" / f"{CONTRACT_NAME}.sol"
ARTIFACT_PATH = CHAIN_DIR / "artifacts" / f"{CONTRACT_NAME}.json"


@lru_cache(maxsize=1)
def _load_cached() -> str:
    return ARTIFACT_PATH.read_text(encoding="utf-8")


def load_artifact() -> dict[str, Any]:
    """Return a fresh copy of the artifact dict.

    Keys: contractName, abi, bytecode, deployedBytecode, solcVersion, evmVersion,
    optimizer, sourceSha256.
    """
    data: dict[str, Any] = json.loads(_load_cached())
    return data


def source_sha256() -> str:
    """sha256 hex digest of the Solidity source as it is on disk now."""
    return hashlib.sha256(SOURCE_PATH.read_bytes()).hexdigest()
