"""Cryptographic building blocks, all from the ``cryptography`` package.

* X25519 key pairs and agreement followed by HKDF-SHA256 (:func:`agree`).
  The HKDF ``info`` binds a protocol label, the purpose, the round id and both
  node ids (sorted), so the pairwise-mask key and the share-encryption key of a
  pair differ from each other and from every other round.
* AES-256-GCM for the Shamir shares relayed through the server
  (:func:`encrypt_shares` / :func:`decrypt_shares`); the associated data binds
  sender, receiver and round, so the server can neither redirect nor replay.
* AES-256-CTR as the mask PRG (:class:`MaskStream`): keystream of a fresh
  32-byte key with an all-zero counter block. Each key masks exactly one
  vector, so a fixed nonce never repeats under one key.
* Ed25519 signatures over key advertisements (:func:`sign_advertisement`,
  :func:`verify_advertisement`).
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import SecAggError

PROTOCOL_LABEL = b"fedtext-secagg+/v1"
KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
MAX_NODE_ID = (1 << 64) - 1

PURPOSE_MASK = b"pairwise-mask"
PURPOSE_SHARES = b"share-encryption"


# --------------------------------------------------------------------- framing
def node_id_bytes(node_id: int) -> bytes:
    """Fixed 8-byte big-endian encoding of a node id (Flower ids are uint64)."""
    if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id <= MAX_NODE_ID:
        raise SecAggError(f"node id must be an int in [0, 2**64), got {node_id!r}")
    return node_id.to_bytes(8, "big")


def _framed(*parts: bytes) -> bytes:
    # Length-prefix every part so that no two different tuples share an encoding.
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def random_bytes(n: int = KEY_BYTES) -> bytes:
    """Cryptographically secure random bytes (OS CSPRNG)."""
    return os.urandom(n)


# ---------------------------------------------------------------- key exchange
def generate_x25519() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw ``(secret, public)`` 32-byte strings."""
    secret = X25519PrivateKey.generate()
    return secret.private_bytes_raw(), secret.public_key().public_bytes_raw()


def x25519_public_from_secret(secret: bytes) -> bytes:
    """The raw public key belonging to a raw X25519 secret key."""
    try:
        return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    except ValueError as exc:
        raise SecAggError(f"invalid X25519 secret key: {exc}") from exc


def agree(
    own_secret: bytes,
    peer_public: bytes,
    *,
    purpose: bytes,
    round_id: bytes,
    own_id: int,
    peer_id: int,
) -> bytes:
    """X25519 agreement then HKDF-SHA256 to a 32-byte key for one purpose.

    Both ends derive the same key because the ids enter the HKDF info sorted.
    """
    try:
        shared = X25519PrivateKey.from_private_bytes(own_secret).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:  # wrong length or a low-order (all-zero) point
        raise SecAggError(f"X25519 agreement with node {peer_id} failed: {exc}") from exc
    low, high = sorted((own_id, peer_id))
    info = _framed(PROTOCOL_LABEL, purpose, round_id, node_id_bytes(low), node_id_bytes(high))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


# ------------------------------------------------------------- share envelope
def _share_aad(sender: int, receiver: int, round_id: bytes) -> bytes:
    return _framed(PROTOCOL_LABEL, b"shares", round_id, node_id_bytes(sender), node_id_bytes(receiver))


def encrypt_shares(key: bytes, plaintext: bytes, *, sender: int, receiver: int, round_id: bytes) -> bytes:
    """AES-256-GCM encrypt; returns ``nonce || ciphertext || tag``.

    The same key serves both directions of a pair, hence a random nonce.
    """
    nonce = random_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _share_aad(sender, receiver, round_id))


def decrypt_shares(key: bytes, envelope: bytes, *, sender: int, receiver: int, round_id: bytes) -> bytes:
    """Inverse of :func:`encrypt_shares`.

    Raises
    ------
    SecAggError
        Wrong key, tampered ciphertext, or associated data (sender, receiver,
        round) different from the encryption's.
    """
    if not isinstance(envelope, bytes) or len(envelope) < NONCE_BYTES + 16:
        raise SecAggError(f"share ciphertext from node {sender} is truncated")
    nonce, body = envelope[:NONCE_BYTES], envelope[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, _share_aad(sender, receiver, round_id))
    except InvalidTag as exc:
        raise SecAggError(
            f"share ciphertext from node {sender} to node {receiver} failed authentication "
            "(wrong key, tampering or wrong round/ids)"
        ) from exc


# ------------------------------------------------------------------- mask PRG
class MaskStream:
    """AES-256-CTR keystream read as uint32 words, chunk by chunk.

    Consecutive :meth:`read_into` calls continue the same keystream, so a long
    mask can be produced in cache-sized pieces interleaved with other streams.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecAggError(f"mask key must be {KEY_BYTES} bytes, got {len(key)}")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def read_into(self, zeros: np.ndarray, scratch: np.ndarray, count: int) -> np.ndarray:
        """Next ``count`` uint32 words of keystream.

        ``zeros`` must hold at least ``count`` zero uint32 words and ``scratch``
        at least ``4 * count + 15`` bytes (``update_into`` may need a block of
        slack). The returned view aliases ``scratch``.
        """
        src = memoryview(zeros[:count]).cast("B")
        self._encryptor.update_into(src, scratch)
        return scratch[: 4 * count].view(np.uint32)


def mask_vector(key: bytes, length: int) -> np.ndarray:
    """The whole mask for ``key`` as a new uint32 array (tests, small vectors)."""
    zeros = np.zeros(length, dtype=np.uint32)
    scratch = np.empty(4 * length + 15, dtype=np.uint8)
    return MaskStream(key).read_into(zeros, scratch, length).copy()


# ------------------------------------------------------------------ signatures
def _advertisement_message(round_id: bytes, node_id: int, pk_c: bytes, pk_s: bytes) -> bytes:
    return _framed(PROTOCOL_LABEL, b"advertise-keys", round_id, node_id_bytes(node_id), pk_c, pk_s)


def load_identity_key(key: bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """Accept an Ed25519 private key object or its raw 32 bytes."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    try:
        return Ed25519PrivateKey.from_private_bytes(key)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"identity_key must be a raw 32-byte Ed25519 key: {exc}") from exc


def sign_advertisement(
    identity: Ed25519PrivateKey, round_id: bytes, node_id: int, pk_c: bytes, pk_s: bytes
) -> bytes:
    """Ed25519 signature binding round, node id and both advertised keys."""
    return identity.sign(_advertisement_message(round_id, node_id, pk_c, pk_s))


def signed_by(
    identity_public: bytes, signature: bytes, round_id: bytes, node_id: int, pk_c: bytes, pk_s: bytes
) -> bool:
    """Whether ``signature`` is ``identity_public``'s signature of the advertisement."""
    try:
        verify_advertisement(identity_public, signature, round_id, node_id, pk_c, pk_s)
    except SecAggError:
        return False
    return True


def verify_advertisement(
    identity_public: bytes, signature: bytes, round_id: bytes, node_id: int, pk_c: bytes, pk_s: bytes
) -> None:
    """Raise :class:`SecAggError` unless ``signature`` is valid for the advertisement."""
    try:
        Ed25519PublicKey.from_public_bytes(identity_public).verify(
            signature, _advertisement_message(round_id, node_id, pk_c, pk_s)
        )
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise SecAggError(f"invalid Ed25519 signature on the key advertisement of node {node_id}") from exc
