"""A client's secure-aggregation identity: the files ``fedtext certs`` writes.

=================================  ==============================================
``clients/client-<i>.id.key``      this client's Ed25519 private key (PEM, PKCS8);
                                   it signs the client's SecAgg key advertisements
``clients/identities.json``        ``{"<i>": "<public key hex>", ...}``: every
                                   member's public key, the set a client trusts
=================================  ==============================================

With both, a client masks only with neighbours whose advertisements a federation
member signed, so the server cannot slip in keys of its own and read an update.
``fedtext client`` checks the files before joining; the ClientApp loads them
again from the paths in the node config (the keys never leave the client's host).
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from common.errors import ConfigError

IDENTITY_KEY = "identity-key"  # node config: path of the client's .id.key
TRUSTED_IDENTITIES = "trusted-identities"  # node config: path of identities.json


def read_identity_key(path: Path, flag: str = "--identity") -> Ed25519PrivateKey:
    """This client's signing key, or a one-line error naming the file."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{flag} '{path}': cannot be read ({exc.strerror or exc})") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{flag} '{path}': not an unencrypted PEM private key "
                          "(use clients/client-<i>.id.key from `fedtext certs`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{flag} '{path}': expected an Ed25519 key, got {type(key).__name__}")
    return key


def read_trusted_identities(path: Path, flag: str = "--trusted-identities") -> list[bytes]:
    """The raw public keys listed in an ``identities.json``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{flag} '{path}': cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{flag} '{path}': not JSON ({exc})") from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{flag} '{path}': expected a non-empty object {{\"<i>\": \"<public key hex>\"}}")
    keys = []
    for name, value in doc.items():
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(f"{flag} '{path}': entry '{name}': expected 64 hex digits (an Ed25519 public key)")
        keys.append(raw)
    return keys


def load_identity(identity: Path, trusted: Path) -> tuple[Ed25519PrivateKey, list[bytes]]:
    """Both files, checked together: this client's own key must be among the trusted ones."""
    key = read_identity_key(identity)
    keys = read_trusted_identities(trusted)
    if key.public_key().public_bytes_raw() not in keys:
        raise ConfigError(f"--identity '{identity}': its public key is not in --trusted-identities '{trusted}'")
    return key, keys
