"""``fedtext server``: run the coordinating SuperLink of a real deployment.

1. check every input first (flags, certificate files, authorized keys, the
   server's test data, the ``--resume`` checkpoint) so a mistake ends in one
   line before anything starts;
2. start a SuperLink (``server.superlink.LocalSuperLink``) with TLS and
   SuperNode authentication (unless ``--insecure``) and register every client
   public key found in ``--authorized-keys``;
3. submit the fedtext app with the run config written to ``OUT/run_config.toml``;
   the strategy waits until ``--min-clients`` SuperNodes are connected;
4. print each round as the ServerApp records it, copy its logs to ``OUT/run.log``;
5. exit 0 only when the run finished as ``completed``; stop every process it
   started on exit, on SIGTERM and on Ctrl-C.

Module-level imports stay light: the CLI imports this module for every command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.config import FedTextConfig, absolute_paths, add_config_arguments, given_keys
from common.errors import ConfigError

# Keys of `fedtext simulate` that describe the simulated federation only: the
# SuperNodes hold their own data, so the server has no `data` to split.
SIMULATION_ONLY_KEYS = {"data", "clients", "partition", "client-cpus", "client-gpus"}
TLS_FILES = ("ca.crt", "server.pem", "server.key")
DEFAULT_PORT = 9091


def server_keys() -> list[str]:
    """Config keys of ``fedtext server``: all but the simulated federation's."""
    keys = FedTextConfig.keys("training") + FedTextConfig.keys("federation")
    return [k for k in keys if k not in SIMULATION_ONLY_KEYS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fedtext server``."""
    g = parser.add_argument_group("deployment")
    g.add_argument("--certs", type=Path, default=None, metavar="DIR",
                   help="Folder with ca.crt, server.pem and server.key (from `fedtext certs`).")
    g.add_argument("--authorized-keys", type=Path, default=None, metavar="DIR",
                   help="Folder of SuperNode public keys (*.pub, OpenSSH format; *.id.pub "
                        "identity keys are skipped); each is registered with the SuperLink.")
    g.add_argument("--host", default="0.0.0.0",
                   help="Interface the SuperLink listens on (default: 0.0.0.0).")
    g.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"Port of the SuperLink's HTTPS API, the one clients dial (default: {DEFAULT_PORT}).")
    g.add_argument("--insecure", action="store_true",
                   help="Plain HTTP and no SuperNode authentication. Throw-away local tests only.")
    add_config_arguments(parser, server_keys())
    # The name this flag had before every command took --config.
    parser.add_argument("--run-config", dest="config_file", default=None, metavar="FILE",
                        help=argparse.SUPPRESS)


# --- checks (no process started yet) ------------------------------------------------


def _config(args: argparse.Namespace, echo=print) -> FedTextConfig:  # noqa: ANN001
    values = given_keys(args, echo)
    if values.get("resume"):
        from server.checkpoint import resumed_config

        return prepare_server_config(resumed_config(values))
    return prepare_server_config(FedTextConfig.from_mapping(values))


def prepare_server_config(cfg: FedTextConfig) -> FedTextConfig:
    """Absolute paths for the ServerApp (it runs in another folder)."""
    return absolute_paths(cfg).replace(clients=min(max(cfg.min_clients, 1), 1000))


def check_endpoint(host: str, port: int) -> None:
    if not host.strip() or any(c.isspace() for c in host):
        raise ConfigError(f"--host: expected an interface name or address, got {host!r}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: expected 1-65535, got {port}")


def check_port_free(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--port {port}: cannot listen on {host} ({exc.strerror or exc})") from exc


def check_tls_files(certs: Path | None) -> Any:
    """The SuperLink's TLS files; one line naming the first missing one."""
    from server.superlink import TlsFiles

    if certs is None:
        raise ConfigError("--certs: required (a folder with ca.crt, server.pem, server.key); "
                          "--insecure turns TLS off for local tests")
    if not certs.is_dir():
        raise ConfigError(f"--certs '{certs}': not a folder")
    for name in TLS_FILES:
        path = certs / name
        if not path.is_file():
            raise ConfigError(f"--certs: '{path}' not found (run `fedtext certs --out {certs}`)")
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--certs: '{path}' is not a readable PEM file") from exc
        if "-----BEGIN " not in text:
            raise ConfigError(f"--certs: '{path}' is not a PEM file")
    return TlsFiles(ca=(certs / "ca.crt").resolve(), cert=(certs / "server.pem").resolve(),
                    key=(certs / "server.key").resolve())


def authorized_keys(folder: Path | None) -> list[Path]:
    """OpenSSH public keys (``*.pub`` minus ``*.id.pub``) of the SuperNodes allowed in."""
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    if folder is None:
        raise ConfigError("--authorized-keys: required (the folder of clients' *.pub keys); "
                          "--insecure turns node authentication off for local tests")
    if not folder.is_dir():
        raise ConfigError(f"--authorized-keys '{folder}': not a folder")
    keys = sorted(p for p in folder.glob("*.pub") if not p.name.endswith(".id.pub") and p.is_file())
    if not keys:
        raise ConfigError(f"--authorized-keys '{folder}': no *.pub SuperNode public key in it")
    for path in keys:
        try:
            load_ssh_public_key(path.read_bytes().strip())
        except (ValueError, TypeError, OSError, Exception) as exc:  # noqa: BLE001 - any parse failure
            raise ConfigError(
                f"--authorized-keys: '{path}' is not an OpenSSH public key ({type(exc).__name__})"
            ) from exc
    return [p.resolve() for p in keys]


# --- the command --------------------------------------------------------------------


def preflight(cfg: FedTextConfig) -> tuple[list[str], int, str, str]:
    """The server's test set, the model against its freezing policy, and a checkpoint to resume.

    Returns
    -------
    tuple[list[str], int, str, str]
        Label names, test rows, where they come from, and the model's one-line description.
    """
    from common.model import check_model
    from common.splits import server_test_set

    test = server_test_set(cfg)
    model = check_model(cfg, len(test.label_names))
    if cfg.resume:
        from server.checkpoint import load_for_resume

        load_for_resume(cfg)  # a corrupt or mismatched checkpoint, too
    return test.label_names, len(test), str(test.source), model


def run(args: argparse.Namespace, echo=print) -> int:  # noqa: ANN001
    """``fedtext server``; returns the exit code."""
    check_endpoint(args.host, args.port)
    cfg = _config(args, echo)
    if args.insecure:
        if args.certs is not None or args.authorized_keys is not None:
            raise ConfigError("--insecure: cannot be combined with --certs/--authorized-keys")
        tls, keys = None, []
    else:
        tls = check_tls_files(args.certs)
        keys = authorized_keys(args.authorized_keys)
    check_port_free(args.host, args.port)

    from common.processes import ignore_signals, in_fresh_process, stop_process_group

    # Fails in a second with one line, before any process starts; in a child,
    # so that this process, which then follows the run for its whole length,
    # does not keep torch, transformers and datasets loaded.
    labels, rows, source, model = in_fresh_process(preflight, cfg)
    from server.superlink import LocalSuperLink, echo_rounds, follow_run, report_run, write_run_config

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.insecure:
        print("fedtext server: warning: --insecure: plain HTTP, any SuperNode may join and "
              "read the model; never use it outside a throw-away local test", file=sys.stderr)
    echo(f"fedtext server: {cfg.rounds} rounds, strategy {cfg.strategy}, "
         f"labels {', '.join(labels)}; test set {rows} rows from {source}")
    echo(f"model {cfg.model}: {model}")
    run_config = write_run_config(cfg, out / "run_config.toml")
    metrics = out / "metrics.json"
    metrics.unlink(missing_ok=True)
    # The SuperLink's state is in memory, new at each start: keys are registered again below.
    home = out / ".flwr"
    superlink = LocalSuperLink(home=home, simulation=False, host=args.host, port=args.port,
                               tls=tls, node_auth=tls is not None)
    logs = None
    status, details = "", ""
    try:  # SIGTERM ends it like Ctrl-C: simulations.cli.main installs the handlers
        superlink.start()
        scheme = "http" if tls is None else "https"
        echo(f"SuperLink listening on {scheme}://{args.host}:{args.port}"
             f"{' (TLS, SuperNode authentication)' if tls else ' (INSECURE)'}")
        for key in keys:
            superlink.register_node_key(key)
        if keys:
            echo(f"registered {len(keys)} SuperNode key(s) from {args.authorized_keys}")
        run_id = superlink.submit(run_config)
        logs = superlink.stream_logs(run_id, out / "run.log")
        echo(f"run {run_id} submitted; logs: {out / 'run.log'}")
        echo(f"waiting for {cfg.min_clients} clients")
        status, details = follow_run(superlink, run_id, metrics, echo_rounds(echo, cfg.rounds))
    finally:
        ignore_signals()
        if logs is not None:
            stop_process_group(logs, grace=2.0)
        superlink.stop()
    return report_run(status, details, out, echo, "fedtext server")

