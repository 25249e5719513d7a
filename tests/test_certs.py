"""Tests for ``deploy.certs``: certificate chain, key formats, file safety, and a real SuperLink."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from common.processes import descendants, is_alive
from deploy import certs

HOSTS = ["server", "fl.example.org", "10.1.2.3", "2001:db8::7"]
PRIVATE_FILES = ["ca.key", "server.key", "clients/client-1.key", "clients/client-1.id.key",
                 "clients/client-2.key", "clients/client-2.id.key"]


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated certificate set shared by the read-only tests."""
    out = tmp_path_factory.mktemp("certs") / "out"
    certs.make_certificates(out, HOSTS, clients=2)
    return out


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san_general_name(host: str) -> x509.GeneralName:
    """Build the verification subject for ``host`` the way a TLS client would."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def verify_server_chain(cert_dir: Path, host: str, ca_file: str = "ca.crt") -> list[x509.Certificate]:
    """Verify server.pem against ``ca_file`` for ``host`` with cryptography's web PKI policy."""
    store = Store([load_cert(cert_dir / ca_file)])
    verifier = PolicyBuilder().store(store).build_server_verifier(san_general_name(host))
    return verifier.verify(load_cert(cert_dir / "server.pem"), [])


# ---------------------------------------------------------------------- chain, SAN, EKU


@pytest.mark.parametrize("host", HOSTS + list(certs.LOOPBACK_HOSTS))
def test_server_chain_verifies_for_each_host(cert_dir: Path, host: str) -> None:
    chain = verify_server_chain(cert_dir, host)
    assert chain[-1] == load_cert(cert_dir / "ca.crt")


def test_chain_rejects_unlisted_host_and_foreign_ca(cert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(VerificationError):
        verify_server_chain(cert_dir, "not-listed.example.org")
    other = tmp_path / "other"
    certs.make_certificates(other, ["server"], clients=1)
    shutil.copy(other / "ca.crt", cert_dir.parent / "foreign-ca.crt")
    with pytest.raises(VerificationError):
        verify_server_chain(cert_dir, "server", ca_file="../foreign-ca.crt")


def test_san_lists_dns_names_and_ips_separately(cert_dir: Path) -> None:
    san = load_cert(cert_dir / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert san.get_values_for_type(x509.DNSName) == ["server", "fl.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "10.1.2.3", "2001:db8::7", "127.0.0.1", "::1",
    ]


def test_no_loopback_leaves_only_given_hosts(tmp_path: Path) -> None:
    certs.make_certificates(tmp_path, ["server"], clients=1, include_loopback=False)
    san = load_cert(tmp_path / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert list(san) == [x509.DNSName("server")]


def test_server_eku_and_ca_constraints(cert_dir: Path) -> None:
    server = load_cert(cert_dir / "server.pem")
    ca = load_cert(cert_dir / "ca.crt")
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ca_bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_bc.critical and ca_bc.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert server.issuer == ca.subject


# ---------------------------------------------------------------------------- key files


def test_supernode_auth_keys_are_openssh_p384(cert_dir: Path) -> None:
    for i in (1, 2):
        private_bytes = (cert_dir / f"clients/client-{i}.key").read_bytes()
        assert private_bytes.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        private = serialization.load_ssh_private_key(private_bytes, password=None)
        public = serialization.load_ssh_public_key((cert_dir / f"clients/client-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert private.curve.name == public.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()


def test_identity_keys_match_identities_json(cert_dir: Path) -> None:
    identities = json.loads((cert_dir / "clients/identities.json").read_text())
    assert sorted(identities) == ["1", "2"]
    for index, public_hex in identities.items():
        private = serialization.load_pem_private_key(
            (cert_dir / f"clients/client-{index}.id.key").read_bytes(), password=None
        )
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert raw.hex() == public_hex
        assert (cert_dir / f"clients/client-{index}.id.pub").read_text().strip() == public_hex
        # The published identity must verify what the private key signs.
        ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(
            private.sign(b"advert"), b"advert"
        )
    assert len(set(identities.values())) == 2


def test_private_keys_are_0600_and_public_files_are_not_secret(cert_dir: Path) -> None:
    for name in PRIVATE_FILES:
        assert stat.S_IMODE((cert_dir / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((cert_dir / "ca.crt").stat().st_mode) == 0o644


# ------------------------------------------------------------------ overwrite and errors


def test_refuses_overwrite_then_force_replaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert certs.main(["--out", str(out), "--host", "server", "--clients", "1"]) == 0
    (out / "server.key").chmod(0o644)  # a loosened key must come back as 0600 under --force
    old_ca = (out / "ca.crt").read_bytes()
    capsys.readouterr()

    assert certs.main(["--out", str(out), "--host", "server", "--clients", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / "ca.crt") in err and "--force" in err
    assert (out / "ca.crt").read_bytes() == old_ca

    assert certs.main(["--out", str(out), "--host", "server", "--clients", "1", "--force"]) == 0
    assert (out / "ca.crt").read_bytes() != old_ca
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files left behind"


def test_refusal_names_a_single_existing_client_file(tmp_path: Path) -> None:
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients/client-2.pub").write_text("keep me")
    with pytest.raises(certs.CertError, match="client-2.pub"):
        certs.make_certificates(tmp_path, ["server"], clients=2)
    assert not (tmp_path / "ca.crt").exists(), "nothing may be written when refusing"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--host", ""], "--host"),
        (["--host", "my server"], "--host"),
        (["--host", "1.2.3"], "--host"),
        (["--host", "256.1.1.1"], "--host"),
        (["--host", "::g"], "--host"),
        (["--host=-bad-.example"], "--host"),
        (["--host", "bad_name.example"], "--host"),
        (["--host", "[::1]"], "--host"),
        (["--host", "server", "--clients", "0"], "--clients"),
    ],
)
def test_bad_arguments_give_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    assert certs.main(["--out", str(tmp_path / "c"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err
    assert not (tmp_path / "c").exists()


def test_make_certificates_returns_every_written_path(tmp_path: Path) -> None:
    written = certs.make_certificates(tmp_path, ["server"], clients=3)
    assert set(written) == {p.relative_to(tmp_path).as_posix() for p in certs.target_paths(tmp_path, 3)}
    assert all(path.is_file() for path in written.values())


# --------------------------------------------------------------------- real SuperLink


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_tree(proc: subprocess.Popen[bytes]) -> list[int]:
    """Terminate ``proc``'s process group and its detached children; return PIDs still running."""
    # flower-superlink starts flower-superexec in a new session: collect it before the
    # parent dies and it gets re-parented out of reach.
    extra = descendants(proc.pid)  # server.superlink's /proc walk
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid_or_pid, kill in [(proc.pid, os.killpg)] + [(pid, os.kill) for pid in extra]:
            try:
                kill(pgid_or_pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + 5
        while any(is_alive(pid) for pid in extra) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not any(is_alive(pid) for pid in extra):
            break
    return [pid for pid in [proc.pid, *extra] if is_alive(pid)]


@pytest.fixture
def superlink(cert_dir: Path, tmp_path: Path) -> Iterator[int]:
    """Start a TLS + node-auth SuperLink on free ports; yield its HTTPS port."""
    bin_dir = Path(sys.executable).parent
    exe = shutil.which("flower-superlink", path=str(bin_dir)) or shutil.which("flower-superlink")
    if exe is None:
        pytest.skip("flower-superlink is not installed")
    port = free_port()
    env = {
        **os.environ,
        # the SuperLink spawns flower-superexec by name
        "PATH": f"{Path(exe).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    cmd = [
        exe, "--ssl-ca-certfile", "ca.crt", "--ssl-certfile", "server.pem",
        "--ssl-keyfile", "server.key", "--enable-supernode-auth",
        "--host", "127.0.0.1", "--port", str(port),
        "--fleet-api-address", f"127.0.0.1:{free_port()}",
        "--control-api-address", f"127.0.0.1:{free_port()}",
    ]
    log = (tmp_path / "superlink.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=cert_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield port
    finally:
        lingering = stop_process_tree(proc)
        log.close()
        assert not lingering, f"processes still running after shutdown: {lingering}"
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, "port still open after shutdown"


def wait_for_health(url: str, context: ssl.SSLContext, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, verify=context, timeout=2.0)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_superlink_serves_https_health_with_generated_certs(cert_dir: Path, superlink: int) -> None:
    trusted = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    response = wait_for_health(f"https://localhost:{superlink}/health", trusted)
    assert response.status_code == 200
    assert httpx.get(f"https://127.0.0.1:{superlink}/health", verify=trusted, timeout=5).status_code == 200

    # The system trust store does not know our CA, so verification must fail.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://localhost:{superlink}/health", verify=ssl.create_default_context(), timeout=5)

    # Plain HTTP must never get an answer from the TLS port.
    try:
        plain = httpx.get(f"http://127.0.0.1:{superlink}/health", timeout=5)
    except httpx.TransportError:
        pass
    else:
        assert plain.status_code != 200, "SuperLink answered plaintext HTTP"


def test_by_default_enough_key_sets_for_secure_aggregation(tmp_path: Path) -> None:
    """SecAgg+ needs 3 clients a round, and deploy/compose.yaml runs 3: the default made 2."""
    assert certs.main(["--out", str(tmp_path), "--host", "server"]) == 0
    assert sorted(p.name for p in (tmp_path / "clients").glob("*.id.key")) == [
        "client-1.id.key", "client-2.id.key", "client-3.id.key"]


def test_a_folder_in_a_key_files_place_is_named_even_with_force(tmp_path: Path) -> None:
    """Docker and podman create a folder for a missing bind-mount source; --force used to end in a traceback."""
    (tmp_path / "clients" / "client-3.key").mkdir(parents=True)
    with pytest.raises(certs.CertError, match=r"client-3.key is a directory"):
        certs.make_certificates(tmp_path, ["server"], clients=3, force=True)
    assert not (tmp_path / "ca.key").exists()  # nothing written
