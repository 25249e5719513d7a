"""Checkpoints: what a federation needs to continue after a crash, in ``OUT/checkpoint/``.

After every completed round the ServerApp replaces the folder with a new one:

===================  ==============================================================
``manifest.json``    format, version, round, strategy class and the SHA-256 of
                     every other file (written last: a folder with a manifest is
                     complete)
``model.npz``        the global model's trainable arrays, by parameter name; the
                     frozen part is rebuilt from the pretrained checkpoint + seed
                     (``common.model``), so it is not stored
``strategy.npz``     the Flower strategy's numpy state: FedOpt's ``current_arrays``,
                     ``m_t``, ``v_t``; FedAvgM's ``current_arrays``, ``momentum_vector``
``strategy.json``    how ``strategy.npz`` maps back onto those attributes (dict keys,
                     list length, ArrayRecord), and the strategy's class
``metrics.json``     the run's ``metrics.json`` document so far (``server.outputs``)
``config.json``      the run config
===================  ==============================================================

No pickle anywhere: numpy arrays load with ``allow_pickle=False`` and the rest
is JSON, so a checkpoint from elsewhere cannot run code.

The new folder is written under a temporary name and renamed into place; the
previous one is moved aside first and deleted afterwards. A crash between those
two renames leaves ``checkpoint.old``, which :func:`find_checkpoint` falls back to.

Resuming (config key ``resume``; ``fedtext simulate|server --resume DIR`` start
from the checkpoint's run config, flags on top) reads a checkpoint back, checks every hash, the
format version, and that the keys defining the model, the data and the strategy
(:data:`IDENTITY_KEYS`) match the current run; any problem is one line naming the
file or key (:class:`CheckpointError`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from common.config import FedTextConfig, to_key
from common.errors import ConfigError, FedTextError

log = logging.getLogger("fedtext.server")

FORMAT = "fedtext-checkpoint"
VERSION = 1
FOLDER = "checkpoint"
MANIFEST = "manifest.json"
MODEL_FILE = "model.npz"
STATE_FILE = "strategy.npz"
STATE_INDEX = "strategy.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
FILES = (MODEL_FILE, STATE_FILE, STATE_INDEX, METRICS_FILE, CONFIG_FILE)

# The numpy state of Flower's strategies (flwr.serverapp.strategy 1.42): FedOpt
# (FedAdam, FedYogi, FedAdagrad) keeps current_arrays, m_t, v_t; FedAvgM keeps
# current_arrays (an ArrayRecord) and momentum_vector (a list). FedAvg and FedProx
# keep none. Whatever of these the configured strategy has is saved.
STATE_ATTRIBUTES = ("current_arrays", "m_t", "v_t", "momentum_vector")

# Keys that define what is being trained: the model and its trainable part, the
# data each client holds, the server's test set and the strategy's maths. They
# must match to resume; the others (lr, epochs, timeouts, rounds, out...) may change.
IDENTITY_KEYS = (
    "model", "num-hidden-layers", "freeze", "lora-r", "lora-alpha", "lora-dropout",
    "data", "test-data", "text-column", "label-column", "labels", "max-examples",
    "max-test-examples", "test-fraction", "client-eval-fraction", "clients", "partition",
    "strategy", "server-lr", "server-tau", "server-momentum", "seed",
)


class CheckpointError(FedTextError):
    """A checkpoint cannot be resumed from: missing, corrupt, or from another run."""


@dataclass
class Checkpoint:
    """A checkpoint read back and verified against its manifest.

    Attributes
    ----------
    path : Path
        The checkpoint folder.
    server_round : int
        The last completed round.
    arrays : dict[str, np.ndarray]
        The global model's trainable arrays after that round.
    strategy_class : str
        Class name of the strategy that wrote it (``FedAdam``...).
    strategy_state : dict[str, Any]
        Attribute name -> value (dict or list of arrays, ``ArrayRecord``, or None).
    metrics : dict
        The run's ``metrics.json`` document up to that round.
    config : dict
        The run config of the run that wrote it.
    """

    path: Path
    server_round: int
    arrays: dict[str, np.ndarray]
    strategy_class: str
    strategy_state: dict[str, Any]
    metrics: dict[str, Any]
    config: dict[str, Any]


# --- writing ------------------------------------------------------------------------


def write_checkpoint(
    out: str | Path,
    server_round: int,
    arrays: dict[str, np.ndarray],
    strategy: Any,
    metrics: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Replace ``out/checkpoint`` with the state after ``server_round``.

    Parameters
    ----------
    out : str or Path
        The run folder.
    server_round : int
        The round just completed.
    arrays : dict[str, np.ndarray]
        The global model's trainable arrays.
    strategy : flwr.serverapp.strategy.Strategy
        The strategy whose :data:`STATE_ATTRIBUTES` are saved.
    metrics : dict
        The ``metrics.json`` document so far.
    config : dict
        The run config (kebab-case keys).

    Returns
    -------
    Path
        The checkpoint folder.
    """
    out = Path(out)
    # Half-written folders of a run that crashed while checkpointing: never complete, never read.
    for stale in out.glob(f".{FOLDER}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out / f".{FOLDER}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    index, state_arrays = encode_strategy_state(strategy)
    save_npz(tmp / MODEL_FILE, arrays)
    save_npz(tmp / STATE_FILE, state_arrays)
    write_json(tmp / STATE_INDEX, index)
    write_json(tmp / METRICS_FILE, metrics)
    write_json(tmp / CONFIG_FILE, config)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "round": server_round,
        "strategy": type(strategy).__name__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": {name: sha256(tmp / name) for name in FILES},
    }
    write_json(tmp / MANIFEST, manifest)
    return swap_in(tmp, out / FOLDER)


def swap_in(new: Path, final: Path) -> Path:
    """Make ``new`` the checkpoint: move the old one aside, rename, then delete it."""
    # A directory cannot be renamed over a non-empty one, so this takes two
    # renames; between them only `checkpoint.old` exists, and readers fall back to it.
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(new, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def encode_strategy_state(strategy: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The strategy's numpy attributes as (JSON index, flat arrays for an npz).

    Arrays are stored as ``ATTRIBUTE.I``; the index keeps each attribute's kind
    (``dict``, ``list``, ``array_record`` or ``none``) and its keys, in order.
    """
    attributes: dict[str, Any] = {}
    flat: dict[str, np.ndarray] = {}
    for name in STATE_ATTRIBUTES:
        if not hasattr(strategy, name):
            continue
        kind, keys, values = _flatten(getattr(strategy, name), name)
        attributes[name] = {"kind": kind, "keys": keys}
        flat.update({f"{name}.{i}": np.asarray(v) for i, v in enumerate(values)})
    return {"class": type(strategy).__name__, "attributes": attributes}, flat


def _flatten(value: Any, name: str) -> tuple[str, list[str], list[np.ndarray]]:
    if value is None:
        return "none", [], []
    if isinstance(value, ArrayRecord):
        return "array_record", list(value.keys()), [a.numpy() for a in value.values()]
    if isinstance(value, dict):
        return "dict", list(value.keys()), list(value.values())
    if isinstance(value, list):
        return "list", [str(i) for i in range(len(value))], list(value)
    raise TypeError(f"strategy attribute {name!r}: cannot checkpoint a {type(value).__name__}")


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays into an uncompressed ``.npz`` (speed over size: it is rewritten every round)."""
    with path.open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """A JSON document, flushed to disk before the folder is renamed into place."""
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    # The renames themselves must reach the disk, not only the files' contents.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- finding and reading --------------------------------------------------------------


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder named by ``resume``: the folder itself, or a run folder's.

    Raises
    ------
    CheckpointError
        When neither ``path/manifest.json`` nor ``path/checkpoint/manifest.json`` exists.
    """
    path = Path(path).expanduser()
    candidates = [path, path / FOLDER, path / f"{FOLDER}.old"]
    for folder in candidates:
        if (folder / MANIFEST).is_file():
            return folder
    if not path.exists():
        raise CheckpointError(f"config key 'resume': '{path}' not found")
    raise CheckpointError(
        f"config key 'resume': no checkpoint in '{path}' (expected '{path / FOLDER / MANIFEST}'; "
        "a run writes one after its first completed round)"
    )


def run_folder(resume: str | Path) -> Path:
    """The run folder a resumed run writes into when no ``out`` is given."""
    path = Path(resume).expanduser()
    return path.parent if (path / MANIFEST).is_file() else path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint (a checkpoint folder or a run folder).

    Raises
    ------
    CheckpointError
        Naming the file at fault: missing, not matching its SHA-256, unreadable,
        or of another format version.
    """
    folder = find_checkpoint(path)
    manifest = read_manifest(folder)
    for name in FILES:
        verify_file(folder, name, manifest["files"])
    index = read_json(folder / STATE_INDEX)
    return Checkpoint(
        path=folder,
        server_round=manifest["round"],
        arrays=load_npz(folder / MODEL_FILE),
        strategy_class=str(index.get("class", "")),
        strategy_state=decode_strategy_state(index, load_npz(folder / STATE_FILE), folder / STATE_INDEX),
        metrics=read_json(folder / METRICS_FILE),
        config=read_json(folder / CONFIG_FILE),
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """``manifest.json``, checked for format, version, round and file list."""
    path = folder / MANIFEST
    manifest = read_json(path)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint file '{path}': not a fedtext checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint file '{path}': format version {manifest.get('version')!r}, "
            f"this fedtext reads version {VERSION}"
        )
    if not isinstance(manifest.get("round"), int) or manifest["round"] < 1:
        raise CheckpointError(f"checkpoint file '{path}': 'round' must be an integer >= 1")
    files = manifest.get("files")
    if not isinstance(files, dict) or any(not isinstance(files.get(n), str) for n in FILES):
        raise CheckpointError(f"checkpoint file '{path}': 'files' must give a SHA-256 for each of "
                              f"{', '.join(FILES)}")
    return manifest


def verify_file(folder: Path, name: str, hashes: dict[str, str]) -> None:
    """Raise unless ``folder/name`` exists and matches its SHA-256 in the manifest."""
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' is missing")
    if sha256(path) != hashes[name]:
        raise CheckpointError(
            f"checkpoint file '{path}' does not match its SHA-256 in {MANIFEST} (corrupt or modified)"
        )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file; one line naming it if that fails."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file '{path}' is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file '{path}': unreadable JSON ({_first_line(exc)})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"checkpoint file '{path}': expected a JSON object")
    return doc


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickles); one line naming the file if it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except Exception as exc:  # noqa: BLE001 - zipfile, numpy and OS errors alike
        raise CheckpointError(
            f"checkpoint file '{path}': unreadable npz ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def decode_strategy_state(index: dict[str, Any], flat: dict[str, np.ndarray], origin: Path) -> dict[str, Any]:
    """Inverse of :func:`encode_strategy_state`."""
    attributes = index.get("attributes")
    if not isinstance(attributes, dict):
        raise CheckpointError(f"checkpoint file '{origin}': no 'attributes' object")
    state: dict[str, Any] = {}
    for name, entry in attributes.items():
        kind, keys = entry.get("kind"), entry.get("keys", [])
        try:
            values = [flat[f"{name}.{i}"] for i in range(len(keys))]
        except KeyError as exc:
            raise CheckpointError(f"checkpoint file '{origin}': array {exc.args[0]} missing from "
                                  f"{STATE_FILE}") from None
        if kind == "none":
            state[name] = None
        elif kind == "dict":
            state[name] = dict(zip(keys, values, strict=True))
        elif kind == "list":
            state[name] = values
        elif kind == "array_record":
            state[name] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in zip(keys, values, strict=True)})
        else:
            raise CheckpointError(f"checkpoint file '{origin}': attribute '{name}' has unknown kind {kind!r}")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- checking against the current run ---------------------------------------------------


def check_compatible(checkpoint: Checkpoint, cfg: FedTextConfig) -> None:
    """Raise unless ``cfg`` may continue ``checkpoint``: same identity keys, enough rounds.

    Other keys may differ (a longer run, another learning rate); they are logged.
    """
    saved = checkpoint.config
    current = cfg.to_mapping()
    source = checkpoint.path / CONFIG_FILE
    for key in IDENTITY_KEYS:
        if key not in saved:
            raise CheckpointError(f"checkpoint file '{source}': config key '{key}' missing")
        if saved[key] != current[key]:
            raise CheckpointError(
                f"config key '{key}': this run has {current[key]!r} but checkpoint "
                f"'{checkpoint.path}' was made with {saved[key]!r}; it must match to resume"
            )
    if checkpoint.server_round > cfg.rounds:
        raise CheckpointError(
            f"config key 'rounds': {cfg.rounds}, but checkpoint '{checkpoint.path}' is already at "
            f"round {checkpoint.server_round}"
        )
    changed = sorted(k for k in current if k not in (*IDENTITY_KEYS, "resume", "out")
                     and k in saved and saved[k] != current[k])
    for key in changed:
        log.info("resume: config key '%s' changed from %r to %r", key, saved[key], current[key])


def check_arrays(checkpoint: Checkpoint, expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's arrays in the model's order, after checking names and shapes.

    The identity keys matching does not prove that the pretrained model folder
    is the same; its parameter names and shapes must match too.
    """
    source = checkpoint.path / MODEL_FILE
    missing = [k for k in expected if k not in checkpoint.arrays]
    if missing:
        raise CheckpointError(f"checkpoint file '{source}': no array for parameter '{missing[0]}' "
                              f"({len(missing)} missing)")
    extra = [k for k in checkpoint.arrays if k not in expected]
    if extra:
        raise CheckpointError(f"checkpoint file '{source}': parameter '{extra[0]}' is not trainable "
                              "in this model")
    for name, want in expected.items():
        got = checkpoint.arrays[name]
        if got.shape != want.shape:
            raise CheckpointError(f"checkpoint file '{source}': parameter '{name}' has shape "
                                  f"{tuple(got.shape)}, the model expects {tuple(want.shape)}")
    return {name: checkpoint.arrays[name].astype(expected[name].dtype, copy=False) for name in expected}


def restore_strategy(strategy: Any, checkpoint: Checkpoint) -> None:
    """Set the strategy's numpy attributes (FedAdam's moments...) from the checkpoint."""
    source = checkpoint.path / STATE_INDEX
    if checkpoint.strategy_class != type(strategy).__name__:
        raise CheckpointError(f"checkpoint file '{source}': written by strategy "
                              f"{checkpoint.strategy_class}, this run uses {type(strategy).__name__}")
    for name, value in checkpoint.strategy_state.items():
        if name not in STATE_ATTRIBUTES or not hasattr(strategy, name):
            raise CheckpointError(f"checkpoint file '{source}': {type(strategy).__name__} has no "
                                  f"attribute '{name}'")
        setattr(strategy, name, value)


def resumed_config(given: Mapping[str, Any]) -> FedTextConfig:
    """The config of a resumed run: the checkpoint's run config with ``given`` on top.

    Parameters
    ----------
    given : Mapping[str, Any]
        The keys set explicitly (flags, a run-config file), ``resume`` among them.
        Without ``out``, the run continues in the resumed run's folder.

    Raises
    ------
    CheckpointError
        When the checkpoint is missing, its manifest or run config is corrupt,
        or that config is not valid for this fedtext. Only those two files are
        read here: :func:`load_for_resume` verifies the whole checkpoint once the
        config is known, still before anything starts.
    """
    given = {to_key(k): v for k, v in given.items()}
    folder = find_checkpoint(given["resume"])
    verify_file(folder, CONFIG_FILE, read_manifest(folder)["files"])
    saved = {k: v for k, v in read_json(folder / CONFIG_FILE).items() if k not in ("out", "resume")}
    try:
        FedTextConfig.from_mapping(saved)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint file '{folder / CONFIG_FILE}': {exc}") from None
    values = {**saved, **given}
    values.setdefault("out", str(run_folder(given["resume"])))
    return FedTextConfig.from_mapping(values)


def load_for_resume(cfg: FedTextConfig) -> Checkpoint:
    """The checkpoint ``cfg.resume`` names, verified and checked against ``cfg``."""
    checkpoint = read_checkpoint(cfg.resume)
    check_compatible(checkpoint, cfg)
    return checkpoint
