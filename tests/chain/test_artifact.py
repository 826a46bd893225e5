"""The committed artifact matches the Solidity source it claims to be built from."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from chain.artifact import CHAIN_DIR, load_artifact, source_sha256


def test_artifact_is_built_from_the_committed_source() -> None:
    art = load_artifact()
    assert art["sourceSha256"] == source_sha256(), (
        "chain/contracts/GradMeshNetwork.sol changed without recompiling: "
        "run `node chain/compile.mjs`"
    )
    assert art["evmVersion"] == "shanghai"
    assert art["bytecode"].startswith("0x")
    assert len(art["bytecode"]) > 2
    # EIP-170 runtime size limit
    assert (len(art["deployedBytecode"]) - 2) // 2 <= 24_576
    names = {i.get("name") for i in art["abi"]}
    for fn in ("register", "commitWeights", "revealWeights", "settle", "claim", "aggregationSet"):
        assert fn in names


def test_recompiling_reproduces_the_artifact() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (CHAIN_DIR / "node_modules" / "solc" / "package.json").is_file():
        pytest.skip("solcjs not installed (run `npm install --prefix chain`)")
    out = subprocess.run(
        [node, str(CHAIN_DIR / "compile.mjs"), "--stdout"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = json.loads(out.stdout)
    committed = load_artifact()
    pinned = json.loads((CHAIN_DIR / "package.json").read_text())["devDependencies"]["solc"]
    assert fresh["solcVersion"].startswith(pinned + "+")
    for key in ("bytecode", "deployedBytecode", "abi", "sourceSha256", "solcVersion"):
        assert fresh[key] == committed[key], key
