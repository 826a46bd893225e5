"""The commit-reveal commitment, computed exactly as the contract does."""

from __future__ import annotations

from collections.abc import Sequence

from eth_abi import encode
from eth_utils import keccak, to_checksum_address


def weights_commitment(validator: str, epoch: int, uids: Sequence[int],
                       weights: Sequence[int], salt: bytes) -> bytes:
    """keccak256(abi.encode(validator, epoch, uids, weights, salt)).

    Binding the validator's own address makes a copied commitment useless to
    the copier: its reveal would hash to something else.
    """
    return keccak(encode(
        ["address", "uint64", "uint16[]", "uint32[]", "bytes32"],
        [to_checksum_address(validator), epoch, list(uids), list(weights), salt],
    ))
