"""``fedtext client``: join a deployment as a data-holding SuperNode.

1. check the data file first (readable, UTF-8, columns present, no empty text or
   label, at least 2 rows, labels within ``--labels`` when given): a bad file
   ends with ``fedtext: error: <one line>`` and exit code 2 before anything
   connects anywhere;
2. check ``--server HOST:PORT``, the CA certificate and the SuperNode key
   (an EC key in OpenSSH PRIVATE format, as ``fedtext certs`` writes it);
3. start this node's warm worker (``client.worker``: torch and the model stay
   loaded between messages; ``--no-worker`` leaves every message to a fresh
   ClientApp process) and its ClientApp fork server (``client.forkserver``:
   each message's ClientApp process is forked with Flower already imported;
   ``--cold-clientapps`` starts them cold), then run ``flower-supernode`` as a child in its own
   session, with the data file's absolute path in its node config
   (``data-path``): the rows never leave this machine, the ClientApp reads them
   here; forward its output (colour only on a terminal); stop it, the worker
   and everything below them on SIGTERM or Ctrl-C;
4. print this client's own line per round from the ClientApp's journal
   (``client.journal``: rows trained, loss, seconds, bytes sent, masked or
   not; evaluated rows and accuracy);
5. end when the federation does: on the server's end-of-run notice, stop the
   SuperNode and exit 0 with a summary (``--stay`` serves later runs instead);
   when the server has been unreachable for ``--server-timeout`` seconds after
   joining, exit 1 with one line. Before joining, a server that is not up yet
   or has not registered this SuperNode's key yet is retried for
   ``--join-timeout`` seconds.

Without ``--labels`` the label *set* cannot be checked here: the server sends
the federation's labels with every instruction and the ClientApp validates the
file against them again (``common.splits.client_file_data``).

Module-level imports stay light: the CLI imports this module for every command.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.supernode import HEARTBEAT_ENV, HEARTBEAT_RANGE_S
from common.errors import ConfigError, DataError

if TYPE_CHECKING:
    from client.journal import JournalReader, RoundReporter

# Flower exits with these codes (sys.exit truncates them to code % 256).
REFUSED = 305
EXIT_REASONS = {
    302: "the SuperNode key could not be loaded (expected EC, OpenSSH PRIVATE format)",
    305: "the server refused this SuperNode's key: it is not registered on the server "
         "(its .pub must be in the server's --authorized-keys folder)",
}
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9.-]{1,253}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fedtext client``."""
    parser.add_argument("--server", required=True, metavar="HOST:PORT",
                        help="Address of the fedtext server (SuperLink), e.g. fl.example.org:9091.")
    parser.add_argument("--data", required=True, type=Path, metavar="FILE",
                        help="This client's labeled text (CSV, TSV, JSONL, parquet or a saved "
                             "datasets folder). Only its path is shared with the local ClientApp.")
    parser.add_argument("--ca", type=Path, default=None, metavar="FILE",
                        help="CA certificate (ca.crt from `fedtext certs`) that signed the server's.")
    parser.add_argument("--key", type=Path, default=None, metavar="FILE",
                        help="This SuperNode's private key (clients/client-<i>.key, OpenSSH format); "
                             "its .pub must be registered on the server.")
    parser.add_argument("--identity", type=Path, default=None, metavar="FILE",
                        help="This client's Ed25519 identity key (clients/client-<i>.id.key): signs its "
                             "secure-aggregation keys. Give it with --trusted-identities.")
    parser.add_argument("--trusted-identities", type=Path, default=None, metavar="FILE",
                        help="The federation's identity public keys (clients/identities.json): only "
                             "neighbours signed by one of them are masked with, so the server cannot "
                             "substitute keys.")
    parser.add_argument("--insecure", action="store_true",
                        help="Plain HTTP, no key (only against a `fedtext server --insecure`).")
    parser.add_argument("--port", type=int, default=0,
                        help="Local port of this SuperNode's ClientApp API on 127.0.0.1 "
                             "(default: a free one; clients sharing a host need distinct ports).")
    parser.add_argument("--text-column", default="text", help="Column holding the text (default: text).")
    parser.add_argument("--label-column", default="label", help="Column holding the label (default: label).")
    parser.add_argument("--labels", default="",
                        help="The federation's labels, comma-separated, to check the file against "
                             "before joining. Empty: checked by the ClientApp against the labels "
                             "the server sends.")
    parser.add_argument("--partition-id", type=int, default=None,
                        help="A number for this client in logs and seeds (optional).")
    parser.add_argument("--join-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="Keep retrying this long while the server refuses this SuperNode's key "
                             "(it may not be registered yet: the server registers keys after it starts); "
                             "0: give up at the first refusal (default: 300).")
    parser.add_argument("--server-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="Once joined, give up (exit 1) when the server has been unreachable this "
                             "long (default: 60).")
    parser.add_argument("--heartbeat", type=float, default=30.0, metavar="SECONDS",
                        help="How often this SuperNode tells the server it is alive, 10-1800. The server "
                             "drops a node silent for twice this from the round it holds up, so a "
                             "shorter one lets a round go on sooner after a client dies, at one small "
                             "request every few seconds (default: 30, Flower's).")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads this client trains with (OMP_NUM_THREADS of its warm worker, "
                             "or of each ClientApp process with --no-worker); 0: torch's default, every "
                             "core. Give each of several clients on one machine its share of the cores.")
    parser.add_argument("--no-worker", action="store_true",
                        help="Train and evaluate in Flower's fresh ClientApp process for each message, "
                             "importing torch and loading the model every time (default: a warm worker "
                             "process of this client keeps them loaded between messages).")
    parser.add_argument("--cold-clientapps", action="store_true",
                        help="Start each message's ClientApp process cold, as Flower does: about 2 s of "
                             "imports per message (default: fork it from a process of this client that "
                             "has Flower imported; still one fresh process per message).")
    parser.add_argument("--stay", action="store_true",
                        help="Keep serving later runs after the run this client joined ends "
                             "(default: exit 0 when it ends).")
    parser.add_argument("--home", type=Path, default=None, metavar="DIR",
                        help="Folder for this SuperNode's Flower state (default: "
                             "~/.fedtext/client-<hash of server and key>).")


# --- checks -------------------------------------------------------------------------


def parse_server(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); one-line ConfigError otherwise."""
    text = value.strip()
    if "://" in text:
        raise ConfigError(f"--server {value!r}: expected HOST:PORT without a scheme")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise ConfigError(f"--server {value!r}: write IPv6 addresses as [ADDRESS]:PORT")
    if not sep or not host:
        raise ConfigError(f"--server {value!r}: expected HOST:PORT, e.g. fl.example.org:9091")
    if not text.startswith("[") and not _HOSTNAME.match(host):
        raise ConfigError(f"--server {value!r}: {host!r} is not a host name or address")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--server {value!r}: port must be a number in 1-65535, got {port!r}")
    return host, int(port)


def parse_labels(text: str) -> list[str] | None:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        return None
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--labels {text!r}: expected at least 2 distinct comma-separated names")
    return names


def check_data(path: Path, text_column: str, label_column: str, labels: list[str] | None) -> int:
    """Validate the client's file like the ClientApp will; return its row count."""
    from common import data

    if not text_column or not label_column or text_column == label_column:
        raise ConfigError("--label-column: expected a column other than --text-column")
    source = str(path)
    # Without --labels any non-empty label passes here, even a single class:
    # the ClientApp checks membership against the label set the server sends.
    rows = len(data.load_labeled(path, text_column, label_column, labels, min_distinct_labels=1))
    if rows < 2:
        raise DataError(f"data file '{source}': {rows} row(s); a client needs at least 2")
    return rows


def check_ca(path: Path | None) -> Path:
    from cryptography import x509

    if path is None:
        raise ConfigError("--ca: required (ca.crt from the server operator); "
                          "--insecure only against an insecure test server")
    if not path.is_file():
        raise ConfigError(f"--ca '{path}': not found")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--ca '{path}': not a PEM certificate") from exc
    return path.resolve()


def check_key(path: Path | None) -> Path:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    if path is None:
        raise ConfigError("--key: required (clients/client-<i>.key from `fedtext certs`)")
    if not path.is_file():
        raise ConfigError(f"--key '{path}': not found")
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(
            f"--key '{path}': not an unencrypted OpenSSH private key "
            "(use clients/client-<i>.key from `fedtext certs`)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"--key '{path}': expected an EC (NIST curve) key, got {type(key).__name__}")
    return path.resolve()


def check_identity(identity: Path | None, trusted: Path | None) -> None:
    from client.identity import load_identity

    if (identity is None) != (trusted is None):
        raise ConfigError("--identity and --trusted-identities: give both or neither")
    if identity is not None and trusted is not None:
        load_identity(identity, trusted)


def check_local_port(port: int) -> int:
    import socket

    if port == 0:
        from common.processes import free_port

        return free_port()
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: expected 1-65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(f"--port {port}: already in use on 127.0.0.1 "
                              "(give each client on this host its own --port)") from exc
    return port


def write_node_config(home: Path, data: Path, args: argparse.Namespace, journal: Path,
                      worker: tuple[Path, Path] | None = None) -> Path:
    """The SuperNode's node config as a TOML file (any path survives the quoting).

    ``worker``: the warm worker's (socket, key file), when this client runs one.
    """
    from client.journal import STATUS_FILE
    from client.privacy import LEDGER_FILE
    from client.worker import WORKER, WORKER_KEY
    from common.config import toml_value

    lines = [
        f"data-path = {toml_value(str(data))}",
        f"{STATUS_FILE} = {toml_value(str(journal))}",
        f"text-column = {toml_value(args.text_column)}",
        f"label-column = {toml_value(args.label_column)}",
        # Record-level DP: the steps this node's rows have been through, kept
        # with the node so that a resumed run continues its accounting.
        f"{LEDGER_FILE} = {toml_value(str(home / 'privacy-ledger.json'))}",
    ]
    if worker is not None:
        lines.append(f"{WORKER} = {toml_value(str(worker[0]))}")
        lines.append(f"{WORKER_KEY} = {toml_value(str(worker[1]))}")
    if args.partition_id is not None:
        lines.append(f"partition-id = {int(args.partition_id)}")
    if args.identity is not None:
        from client.identity import IDENTITY_KEY, TRUSTED_IDENTITIES

        lines.append(f"{IDENTITY_KEY} = {toml_value(str(args.identity.resolve()))}")
        lines.append(f"{TRUSTED_IDENTITIES} = {toml_value(str(args.trusted_identities.resolve()))}")
    path = home / "node_config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def default_home(server: str, key: Path | None, data: Path) -> Path:
    digest = hashlib.sha256(f"{server}\n{key}\n{data}".encode()).hexdigest()[:12]
    return Path.home() / ".fedtext" / f"client-{digest}"


# --- the command --------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``fedtext client``; 0 when the run it joined ended, else the reason's exit code."""
    if args.partition_id is not None and args.partition_id < 0:
        raise ConfigError(f"--partition-id: expected >= 0, got {args.partition_id}")
    if not args.join_timeout >= 0:  # also refuses nan
        raise ConfigError(f"--join-timeout: expected seconds >= 0, got {args.join_timeout}")
    if not args.server_timeout > 0:
        raise ConfigError(f"--server-timeout: expected seconds > 0, got {args.server_timeout}")
    low, high = HEARTBEAT_RANGE_S
    if not low <= args.heartbeat <= high:
        raise ConfigError(f"--heartbeat: expected seconds between {low:g} and {high:g} "
                          f"(the range Flower's SuperLink accepts), got {args.heartbeat:g}")
    if args.threads < 0:
        raise ConfigError(f"--threads: expected >= 0 (0: every core), got {args.threads}")
    data_path = args.data.expanduser()
    check_data(data_path, args.text_column, args.label_column, parse_labels(args.labels))
    data_path = data_path.resolve()
    host, port = parse_server(args.server)
    if args.insecure:
        if args.ca is not None or args.key is not None:
            raise ConfigError("--insecure: cannot be combined with --ca/--key")
        ca = key = None
    else:
        ca = check_ca(args.ca)
        key = check_key(args.key)
    check_identity(args.identity, args.trusted_identities)
    local_port = check_local_port(args.port)
    home = (args.home or default_home(args.server, key, data_path)).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)

    from client.forkserver import start_forkserver
    from client.worker import start_worker
    from common.processes import flower_env

    superlink = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    journal = home / "status.jsonl"
    journal.write_text("")  # this session's events only
    env = flower_env(home, {**threads_env(args.threads), HEARTBEAT_ENV: str(args.heartbeat)})
    worker = None if args.no_worker else start_worker(home, env)
    forks = None
    try:
        if not args.cold_clientapps:
            forks = start_forkserver(home, env)
            # The SuperExec finds flwr-clientapp on its PATH: the launcher comes first.
            env = {**env, "PATH": os.pathsep.join([str(forks.bin_dir), env.get("PATH", "")])}
        node_config = write_node_config(home, data_path, args, journal, worker.address if worker else None)
        # Flower's SuperNode, with its idle waits capped (client/supernode.py).
        cmd = [sys.executable, "-m", "client.supernode", "--superlink", superlink,
               "--node-config", str(node_config), "--isolation", "subprocess",
               "--host", "127.0.0.1", "--port", str(local_port),
               # Flower's own retry limit: without it a SuperNode whose server is gone
               # retries forever.
               "--max-wait-time", str(args.server_timeout)]
        if args.insecure:
            cmd.append("--insecure")
            print("fedtext client: warning: --insecure: plain HTTP, no SuperNode authentication; "
                  "throw-away local tests only", file=sys.stderr)
        else:
            cmd += ["--root-certificates", str(ca), "--auth-supernode-private-key", str(key)]
        say(f"joining {superlink} with {data_path} "
            f"(rows stay here; ClientApp API on 127.0.0.1:{local_port}, state in {home}"
            f"{'' if worker else '; no warm worker'})")
        return serve_federation(cmd, env, superlink, journal, args)
    finally:
        if forks is not None:
            forks.stop()
        if worker is not None:
            worker.stop()


def serve_federation(cmd: list[str], env: dict[str, str], superlink: str, journal: Path,
                     args: argparse.Namespace) -> int:
    """Run the SuperNode (again, while joining) until the run ends or the server is gone."""
    from client.journal import JournalReader, RoundReporter
    from common.processes import install_signal_handlers

    session = ClientSession(JournalReader(journal), RoundReporter(), stay=args.stay)
    deadline = time.monotonic() + args.join_timeout
    wait = 5.0
    while True:
        outcome = run_supernode(cmd, env, session)
        if outcome.run_ended:
            say(f"done: {session.reporter.summary()}")
            return 0
        if outcome.joined and outcome.unreachable:
            say(f"the server at {superlink} has been unreachable for {args.server_timeout:.0f} s "
                f"(--server-timeout); giving up ({session.reporter.summary()})", err=True)
            return 1
        waiting = outcome.unreachable or REFUSED in outcome.flower_codes
        if outcome.joined or outcome.code == 0 or not waiting or time.monotonic() + wait > deadline:
            return _report_exit(outcome, superlink, args.join_timeout)
        # The server may not be up yet, or not have registered this key yet: it
        # registers keys only once its SuperLink is up, and clients often start
        # at the same time.
        why = "did not answer" if outcome.unreachable else "refused this SuperNode's key"
        say(f"the server {why}; retrying in {wait:.0f} s (--join-timeout {args.join_timeout:.0f} s)", err=True)
        install_signal_handlers()
        time.sleep(wait)
        wait = min(2 * wait, 30.0)


def threads_env(threads: int) -> dict[str, str]:
    """The thread count of the worker and the ClientApp processes: torch reads it at import."""
    if threads <= 0:
        return {}
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def say(line: str, err: bool = False) -> None:
    """One line of this command's own, marked as such among the SuperNode's."""
    print(f"fedtext client: {line}", file=sys.stderr if err else sys.stdout, flush=True)


@dataclass
class ClientSession:
    """What ``fedtext client`` follows across SuperNode restarts: the journal and its totals."""

    reader: JournalReader
    reporter: RoundReporter
    stay: bool = False

    def report_new_events(self) -> bool:
        """Print this client's lines for new journal events; True once a run has ended (unless --stay)."""
        ended = False
        for event in self.reader.new_events():
            line = self.reporter.line(event)
            if line:
                say(line)
            ended = ended or (event.get("event") == "run-end" and not self.stay)
        return ended


@dataclass
class SuperNodeOutcome:
    """How one SuperNode process ended."""

    code: int = 0
    flower_codes: set[int] = field(default_factory=set)  # "Exit Code: N" lines it printed
    joined: bool = False  # it got a node id from the SuperLink
    unreachable: bool = False  # it gave up reconnecting (--max-wait-time)
    run_ended: bool = False  # the server's end-of-run notice arrived; we stopped it
    acknowledging: bool = False  # it printed that it is sending the end-of-run reply
    acknowledged: bool = False  # ... and that it was sent


# After the end-of-run notice is noted, the SuperNode still has to push the
# ClientApp's acknowledgement to the server: stop it once it says it has (a
# second or less), and at the latest after this long (a Flower that words its
# lines otherwise).
ACK_GRACE_S = 4.0


def run_supernode(cmd: list[str], env: dict[str, str], session: ClientSession) -> SuperNodeOutcome:
    """Run one SuperNode until it exits, the run ends, or it gives up on the server."""
    import subprocess
    import threading

    from common.processes import descendants, ignore_signals, install_signal_handlers, stop_process_group

    process: subprocess.Popen[bytes] | None = None
    outcome = SuperNodeOutcome()
    tree: set[int] = set()
    install_signal_handlers()
    try:
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        forward = threading.Thread(target=_forward, args=(process.stdout, outcome), daemon=True)
        forward.start()
        # Not "until EOF": flower-superexec (a grandchild in its own session) keeps
        # the pipe open after the SuperNode is gone. Remember the tree while the
        # SuperNode lives: once it exits, its children are reparented away from it.
        ended_at: float | None = None
        while process.poll() is None:
            tree.update(descendants(process.pid))
            if session.report_new_events() and ended_at is None:
                ended_at = time.monotonic()
            if ended_at is not None and (outcome.acknowledged or time.monotonic() - ended_at >= ACK_GRACE_S):
                outcome.run_ended = True
                break
            if outcome.unreachable:  # Flower's SuperNode gives up but does not exit
                break
            time.sleep(0.5)
        session.report_new_events()
        running = process.poll() is None  # we stopped waiting: the run ended, or it gave up
        outcome.code = (0 if outcome.run_ended else 1) if running else process.returncode
        forward.join(timeout=1.0)
    finally:
        ignore_signals()
        if process is not None:
            stop_process_group(process, grace=5.0)
        _stop_pids(tree)
    return outcome


def _forward(stream: Any, outcome: SuperNodeOutcome) -> None:
    """Copy the SuperNode's output to ours, noting what it says about the connection."""
    from common.messages import RUN_END
    from common.processes import ANSI_COLOUR

    plain = not sys.stdout.isatty()
    for raw in stream:
        sys.stdout.buffer.write(ANSI_COLOUR.sub(b"", raw) if plain else raw)
        sys.stdout.flush()
        outcome.flower_codes.update(_flower_exit_codes(raw))
        if b"SuperNode ID:" in raw:
            outcome.joined = True
        elif b"Giving up reconnection" in raw:
            outcome.unreachable = True
        elif f"Sending: {RUN_END} message".encode() in raw:
            outcome.acknowledging = True
        elif outcome.acknowledging and b"Sent successfully" in raw:
            outcome.acknowledged = True


def _stop_pids(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, processes that were below the SuperNode."""
    import signal

    from common.processes import is_alive

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        alive = [p for p in pids if is_alive(p)]
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(is_alive(p) for p in alive):
            time.sleep(0.2)


def _flower_exit_codes(line: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"Exit Code: (\d+)", line)]


def _report_exit(outcome: SuperNodeOutcome, superlink: str, join_timeout: float) -> int:
    if outcome.code == 0:
        return 0
    if outcome.unreachable:
        say(f"could not reach the server at {superlink} within --join-timeout {join_timeout:.0f} s", err=True)
        return outcome.code
    # Flower prints "Exit Code: N" but its process may end with another status.
    flower = min(outcome.flower_codes) if outcome.flower_codes else None
    reason = EXIT_REASONS.get(flower if flower is not None else -1, "see the SuperNode output above")
    say(f"SuperNode exited with code {flower if flower is not None else outcome.code}: {reason}", err=True)
    return outcome.code
