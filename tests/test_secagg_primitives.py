"""AES-GCM share envelopes, HKDF key separation, the mask PRG and Ed25519."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.secagg.errors import SecAggError
from common.secagg.primitives import (
    PURPOSE_MASK,
    PURPOSE_SHARES,
    agree,
    decrypt_shares,
    encrypt_shares,
    generate_x25519,
    mask_vector,
    sign_advertisement,
    verify_advertisement,
)

ROUND = b"r" * 16


def _pair_keys(purpose: bytes = PURPOSE_SHARES, round_id: bytes = ROUND) -> tuple[bytes, bytes]:
    sk_a, pk_a = generate_x25519()
    sk_b, pk_b = generate_x25519()
    k_ab = agree(sk_a, pk_b, purpose=purpose, round_id=round_id, own_id=1, peer_id=2)
    k_ba = agree(sk_b, pk_a, purpose=purpose, round_id=round_id, own_id=2, peer_id=1)
    return k_ab, k_ba


def test_agreement_is_symmetric_and_separated_by_purpose_and_round() -> None:
    sk_a, pk_a = generate_x25519()
    sk_b, pk_b = generate_x25519()

    def key(purpose: bytes, round_id: bytes, own: tuple[bytes, int], peer: tuple[bytes, int]) -> bytes:
        return agree(own[0], peer[0], purpose=purpose, round_id=round_id, own_id=own[1], peer_id=peer[1])

    k1 = key(PURPOSE_MASK, ROUND, (sk_a, 1), (pk_b, 2))
    assert k1 == key(PURPOSE_MASK, ROUND, (sk_b, 2), (pk_a, 1))
    assert len(k1) == 32
    assert k1 != key(PURPOSE_SHARES, ROUND, (sk_a, 1), (pk_b, 2))
    assert k1 != key(PURPOSE_MASK, b"s" * 16, (sk_a, 1), (pk_b, 2))
    assert k1 != key(PURPOSE_MASK, ROUND, (sk_a, 1), (pk_b, 3))


def test_low_order_point_is_rejected() -> None:
    sk, _ = generate_x25519()
    with pytest.raises(SecAggError, match="agreement"):
        agree(sk, bytes(32), purpose=PURPOSE_MASK, round_id=ROUND, own_id=1, peer_id=2)


def test_share_envelope_round_trip() -> None:
    k_ab, k_ba = _pair_keys()
    ct = encrypt_shares(k_ab, b"secret shares", sender=1, receiver=2, round_id=ROUND)
    assert decrypt_shares(k_ba, ct, sender=1, receiver=2, round_id=ROUND) == b"secret shares"


def test_wrong_key_is_rejected() -> None:
    k_ab, _ = _pair_keys()
    other, _ = _pair_keys()
    ct = encrypt_shares(k_ab, b"x" * 140, sender=1, receiver=2, round_id=ROUND)
    with pytest.raises(SecAggError, match="failed authentication"):
        decrypt_shares(other, ct, sender=1, receiver=2, round_id=ROUND)


@pytest.mark.parametrize("position", [0, 12, 30, -1])
def test_tampered_ciphertext_is_rejected(position: int) -> None:
    k_ab, k_ba = _pair_keys()
    ct = bytearray(encrypt_shares(k_ab, b"x" * 140, sender=1, receiver=2, round_id=ROUND))
    ct[position] ^= 0x01
    with pytest.raises(SecAggError, match="failed authentication"):
        decrypt_shares(k_ba, bytes(ct), sender=1, receiver=2, round_id=ROUND)


@pytest.mark.parametrize(
    "sender,receiver,round_id", [(2, 1, ROUND), (1, 3, ROUND), (3, 2, ROUND), (1, 2, b"q" * 16)]
)
def test_wrong_associated_data_is_rejected(sender: int, receiver: int, round_id: bytes) -> None:
    k_ab, k_ba = _pair_keys()
    ct = encrypt_shares(k_ab, b"x" * 140, sender=1, receiver=2, round_id=ROUND)
    with pytest.raises(SecAggError, match="failed authentication"):
        decrypt_shares(k_ba, ct, sender=sender, receiver=receiver, round_id=round_id)


def test_truncated_ciphertext_is_rejected() -> None:
    k_ab, _ = _pair_keys()
    with pytest.raises(SecAggError, match="truncated"):
        decrypt_shares(k_ab, b"abc", sender=1, receiver=2, round_id=ROUND)


def test_mask_prg_is_deterministic_per_key_and_streams_across_chunks() -> None:
    key = os.urandom(32)
    a = mask_vector(key, 100_003)
    assert a.dtype == np.uint32
    assert np.array_equal(a, mask_vector(key, 100_003))
    assert np.array_equal(a[:10], mask_vector(key, 10))  # prefix property
    assert not np.array_equal(a, mask_vector(os.urandom(32), 100_003))


def test_ed25519_valid_signature_is_accepted() -> None:
    identity = Ed25519PrivateKey.generate()
    public = identity.public_key().public_bytes_raw()
    pk_c, pk_s = os.urandom(32), os.urandom(32)
    sig = sign_advertisement(identity, ROUND, 7, pk_c, pk_s)
    verify_advertisement(public, sig, ROUND, 7, pk_c, pk_s)


@pytest.mark.parametrize("field", ["signature", "key", "node", "round", "signer"])
def test_ed25519_forged_signature_is_rejected(field: str) -> None:
    identity = Ed25519PrivateKey.generate()
    public = identity.public_key().public_bytes_raw()
    pk_c, pk_s = os.urandom(32), os.urandom(32)
    sig = sign_advertisement(identity, ROUND, 7, pk_c, pk_s)
    args = {"signature": sig, "round_id": ROUND, "node_id": 7, "pk_c": pk_c, "pk_s": pk_s}
    if field == "signature":
        args["signature"] = bytes([sig[0] ^ 1]) + sig[1:]
    elif field == "key":
        args["pk_s"] = os.urandom(32)
    elif field == "node":
        args["node_id"] = 8
    elif field == "round":
        args["round_id"] = b"q" * 16
    else:
        args["signature"] = sign_advertisement(Ed25519PrivateKey.generate(), ROUND, 7, pk_c, pk_s)
    with pytest.raises(SecAggError, match="invalid Ed25519 signature"):
        verify_advertisement(public, args["signature"], args["round_id"], args["node_id"], args["pk_c"], args["pk_s"])
