"""Create the TLS certificates and SuperNode keys a fedtext deployment needs.

``fedtext certs --out DIR --host NAME... [--clients N] [--force] [--no-loopback]``
writes, using only :mod:`cryptography`::

    DIR/ca.crt                      self-signed CA certificate (PEM)
    DIR/ca.key                      CA private key (PEM PKCS8, 0600)
    DIR/server.pem                  SuperLink TLS certificate signed by the CA
    DIR/server.key                  its private key (PEM PKCS8, 0600)
    DIR/clients/client-<i>.key      SuperNode auth key, EC P-384, OpenSSH PRIVATE format (0600)
    DIR/clients/client-<i>.pub      its public key, OpenSSH format (registered on the SuperLink)
    DIR/clients/client-<i>.id.key   Ed25519 identity key, PEM PKCS8 (0600)
    DIR/clients/client-<i>.id.pub   its raw 32-byte public key as lowercase hex + newline
    DIR/clients/identities.json     {"<i>": "<identity public key hex>", ...}

Decisions
---------
* The server certificate always carries ``localhost``, ``127.0.0.1`` and
  ``::1`` in addition to every ``--host``, because the SuperLink's own health
  checks and the run submission made by ``fedtext server`` connect over
  loopback. ``--no-loopback`` leaves them out for certificates that must name
  only public endpoints.
* Flower 1.42 accepts SuperNode auth keys only as EC keys on NIST curves with
  the private key in OpenSSH PRIVATE format (PKCS8 PEM makes the SuperNode
  exit with code 302); P-384 is used.
* Identity public keys are stored as raw-byte hex (not PEM) so the same string
  appears in ``client-<i>.id.pub`` and ``identities.json`` and can be compared
  or pasted without parsing.
* Nothing is written unless every target file is absent (or ``--force`` is
  given), so a refused run never leaves a half-replaced key set behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertError",
    "LOOPBACK_HOSTS",
    "add_arguments",
    "main",
    "make_certificates",
    "parse_host",
    "run",
]

#: Names always added to the server certificate unless ``include_loopback=False``.
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

#: Exit code for every usage error and refused overwrite (argparse's convention).
EXIT_USAGE = 2

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# Strings made only of digits and dots, or containing ':', were meant as IP
# addresses; they must not silently become DNS SANs when they fail to parse.
_IP_LIKE = re.compile(r"^[0-9.]+$|:")
# Backdate certificates a little so a client whose clock lags still accepts them.
_CLOCK_SKEW = dt.timedelta(minutes=5)


class CertError(ValueError):
    """A usage error; its message is one line that names the offending flag or file."""


@dataclass(frozen=True)
class _KeyFile:
    """Content of one output file and the mode it must be written with."""

    data: bytes
    mode: int


# --------------------------------------------------------------------------- hosts


def parse_host(value: str) -> x509.GeneralName:
    """Turn one ``--host`` value into a SAN entry.

    Parameters
    ----------
    value : str
        A DNS name (``server``, ``fl.example.org``) or an IPv4/IPv6 address.

    Returns
    -------
    x509.GeneralName
        ``x509.IPAddress`` for addresses, ``x509.DNSName`` otherwise.

    Raises
    ------
    CertError
        If the value is empty, contains whitespace, looks like an IP address
        but is not a valid one, or is not a valid DNS name.
    """
    if not value or not value.strip():
        raise CertError("--host: empty host name")
    if any(ch.isspace() for ch in value):
        raise CertError(f"--host: host {value!r} contains whitespace")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise CertError(f"--host: IPv6 scope ids are not allowed in certificates: {value!r}")
        return x509.IPAddress(address)
    if _IP_LIKE.search(value):
        raise CertError(f"--host: {value!r} is not a valid IP address")
    if not _is_dns_name(value):
        raise CertError(f"--host: {value!r} is not a valid DNS name or IP address")
    return x509.DNSName(value.lower())


def _is_dns_name(value: str) -> bool:
    """Return whether ``value`` is an LDH host name (no trailing dot, no wildcard)."""
    if len(value) > 253:
        return False
    return all(_DNS_LABEL.match(label) for label in value.split("."))


def collect_san_entries(hosts: list[str], include_loopback: bool = True) -> list[x509.GeneralName]:
    """Validate ``hosts`` and return de-duplicated SAN entries in first-seen order.

    Parameters
    ----------
    hosts : list of str
        ``--host`` values; at least one is required.
    include_loopback : bool
        Append :data:`LOOPBACK_HOSTS` (see the module docstring for why).

    Returns
    -------
    list of x509.GeneralName
    """
    if not hosts:
        raise CertError("--host: at least one host name or IP address is required")
    names = list(hosts) + (list(LOOPBACK_HOSTS) if include_loopback else [])
    entries: list[x509.GeneralName] = []
    for name in names:
        entry = parse_host(name)
        if entry not in entries:
            entries.append(entry)
    return entries


# --------------------------------------------------------------------- generation


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pem_private(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def build_ca(valid_days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a self-signed CA allowed to sign only end-entity certificates.

    Parameters
    ----------
    valid_days : int
        Lifetime of the certificate in days.

    Returns
    -------
    tuple
        The CA private key and certificate.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtext"),
        x509.NameAttribute(NameOID.COMMON_NAME, "fedtext CA"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        # path_length=0: this CA signs the server certificate, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    return key, cert


def build_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: list[x509.GeneralName],
    valid_days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create the SuperLink's TLS certificate (EKU serverAuth) signed by the CA.

    Parameters
    ----------
    ca_key, ca_cert
        The issuing CA.
    sans : list of x509.GeneralName
        Subject alternative names; the first one also becomes the common name.
    valid_days : int
        Lifetime of the certificate in days.

    Returns
    -------
    tuple
        The server private key and certificate.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    common_name = str(sans[0].value)[:64]
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtext"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # ECDSA keys only sign the handshake; keyEncipherment is an RSA-only usage.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def build_supernode_auth_key(index: int) -> tuple[bytes, bytes]:
    """Create one SuperNode authentication key pair in the formats Flower 1.42 loads.

    Parameters
    ----------
    index : int
        Client number, used as the public key's comment.

    Returns
    -------
    tuple of bytes
        OpenSSH PRIVATE private key and one-line OpenSSH public key.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" fedtext-client-{index}\n".encode()


def build_identity_key() -> tuple[bytes, str]:
    """Create one Ed25519 identity key used to sign secure-aggregation key advertisements.

    Returns
    -------
    tuple
        PEM PKCS8 private key and the raw public key as lowercase hex.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _pem_private(key), raw.hex()


def plan_files(
    hosts: list[str], clients: int, valid_days: int, include_loopback: bool
) -> dict[str, _KeyFile]:
    """Generate every key and certificate in memory, keyed by path relative to ``--out``.

    Parameters
    ----------
    hosts : list of str
        ``--host`` values.
    clients : int
        Number of SuperNode key sets.
    valid_days : int
        Certificate lifetime in days.
    include_loopback : bool
        Whether the server certificate also names the loopback hosts.

    Returns
    -------
    dict of str to _KeyFile
    """
    sans = collect_san_entries(hosts, include_loopback)
    ca_key, ca_cert = build_ca(valid_days)
    server_key, server_cert = build_server_cert(ca_key, ca_cert, sans, valid_days)
    pem = serialization.Encoding.PEM
    files: dict[str, _KeyFile] = {
        "ca.crt": _KeyFile(ca_cert.public_bytes(pem), _PUBLIC_MODE),
        "ca.key": _KeyFile(_pem_private(ca_key), _PRIVATE_MODE),
        "server.pem": _KeyFile(server_cert.public_bytes(pem), _PUBLIC_MODE),
        "server.key": _KeyFile(_pem_private(server_key), _PRIVATE_MODE),
    }
    identities: dict[str, str] = {}
    for i in range(1, clients + 1):
        auth_private, auth_public = build_supernode_auth_key(i)
        id_private, id_public_hex = build_identity_key()
        identities[str(i)] = id_public_hex
        files[f"clients/client-{i}.key"] = _KeyFile(auth_private, _PRIVATE_MODE)
        files[f"clients/client-{i}.pub"] = _KeyFile(auth_public, _PUBLIC_MODE)
        files[f"clients/client-{i}.id.key"] = _KeyFile(id_private, _PRIVATE_MODE)
        files[f"clients/client-{i}.id.pub"] = _KeyFile(f"{id_public_hex}\n".encode(), _PUBLIC_MODE)
    files["clients/identities.json"] = _KeyFile(
        (json.dumps(identities, indent=2) + "\n").encode(), _PUBLIC_MODE
    )
    return files


# ------------------------------------------------------------------------ writing


def target_paths(out: Path, clients: int) -> list[Path]:
    """List every file :func:`make_certificates` writes, without generating anything."""
    names = ["ca.crt", "ca.key", "server.pem", "server.key", "clients/identities.json"]
    for i in range(1, clients + 1):
        names += [f"clients/client-{i}{suffix}" for suffix in (".key", ".pub", ".id.key", ".id.pub")]
    return [out / name for name in names]


def refuse_existing(paths: list[Path]) -> None:
    """Raise :class:`CertError` naming the first path that already exists."""
    for path in paths:
        if path.exists() or path.is_symlink():
            raise CertError(f"refusing to overwrite existing file {path} (use --force)")


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with exactly ``mode``.

    The temporary file is created with ``mode`` from the start, so a private
    key is never readable by others, not even for an instant, and a replaced
    file never keeps the looser mode of its predecessor.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # umask cannot widen fchmod's mode, but a pre-existing directory ACL could:
    # make the final mode explicit.
    os.chmod(path, mode)


def make_certificates(
    out: Path,
    hosts: list[str],
    clients: int = 3,
    force: bool = False,
    valid_days: int = 365,
    *,
    include_loopback: bool = True,
) -> dict[str, Path]:
    """Create the CA, the SuperLink certificate and ``clients`` SuperNode key sets.

    Parameters
    ----------
    out : Path
        Output directory; created (mode 0700) if missing.
    hosts : list of str
        DNS names and IP addresses clients use to reach the SuperLink.
    clients : int
        Number of SuperNode key sets, at least 1.
    force : bool
        Replace existing files instead of refusing.
    valid_days : int
        Certificate lifetime in days, at least 1.
    include_loopback : bool
        Also name localhost, 127.0.0.1 and ::1 in the server certificate.

    Returns
    -------
    dict of str to Path
        Written files keyed by their path relative to ``out``
        (``"ca.crt"``, ``"clients/client-1.key"``, ...).

    Raises
    ------
    CertError
        On invalid arguments or, without ``force``, an existing target file.
        Nothing is written in that case.
    """
    if clients < 1:
        raise CertError(f"--clients: must be at least 1, got {clients}")
    if valid_days < 1:
        raise CertError(f"--valid-days: must be at least 1, got {valid_days}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CertError(f"--out: {out} exists and is not a directory")
    collect_san_entries(hosts, include_loopback)  # fail on bad hosts before touching disk
    targets = target_paths(out, clients)
    if not force:
        refuse_existing(targets)
    for path in targets:  # even --force cannot replace a folder with a key file
        if path.is_dir():
            raise CertError(f"{path} is a directory, where a key or certificate file belongs (a container "
                            "engine makes one for a bind-mount source that did not exist); remove it")
    files = plan_files(hosts, clients, valid_days, include_loopback)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    (out / "clients").mkdir(exist_ok=True, mode=0o700)
    written: dict[str, Path] = {}
    for name, content in files.items():
        path = out / name
        write_file(path, content.data, content.mode)
        written[name] = path
    return written


# ---------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fedtext certs`` options to ``parser`` (also used as a subcommand)."""
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--host", required=True, action="append", metavar="NAME",
        help="DNS name or IP address of the SuperLink (repeatable)",
    )
    parser.add_argument("--clients", type=int, default=3,
                        help="number of SuperNode key sets (default 3, the fewest secure aggregation accepts)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.add_argument("--valid-days", type=int, default=365, help="certificate lifetime (default 365)")
    parser.add_argument(
        "--no-loopback", action="store_true",
        help="do not add localhost, 127.0.0.1 and ::1 to the server certificate",
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``fedtext certs`` for parsed ``args``; return the process exit code."""
    try:
        written = make_certificates(
            args.out, args.host, clients=args.clients, force=args.force,
            valid_days=args.valid_days, include_loopback=not args.no_loopback,
        )
    except CertError as err:
        print(f"fedtext certs: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {len(written)} files to {args.out}")
    print("  server: ca.crt server.pem server.key; register clients/*.pub on the SuperLink")
    print("  client i: copy ca.crt and clients/client-<i>.key (+ .id.key) to that machine")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``fedtext certs`` as a standalone program."""
    parser = argparse.ArgumentParser(
        prog="fedtext certs",
        description="Create a CA, the SuperLink TLS certificate and SuperNode keys.",
    )
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors; callers want a code
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
