"""Checkpoints (server/checkpoint.py): round trip, atomic replacement, and clear refusals.

A real 1-layer GlobalModel supplies the trainable arrays; FedAdam and FedAvgM
carry non-trivial state (moments, momentum) that must come back bit for bit.
Most tests train only the head (small files, fast); the round trip also runs
with every parameter trainable (about 54 MB per array set).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from common.config import FedTextConfig
from server.checkpoint import (
    FOLDER,
    MANIFEST,
    CheckpointError,
    check_arrays,
    load_for_resume,
    read_checkpoint,
    restore_strategy,
    run_folder,
    sha256,
    write_checkpoint,
)
from server.global_model import GlobalModel
from server.strategies import build_strategy

LABELS = ["business", "entertainment", "politics", "sports", "tech"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg() -> FedTextConfig:
    return FedTextConfig(num_hidden_layers=1, freeze="head", strategy="fedadam", data="packaged:bbc_news",
                         rounds=3, secagg=False, min_clients=2)


@pytest.fixture(scope="module")
def model_arrays(cfg: FedTextConfig) -> dict[str, np.ndarray]:
    model = GlobalModel(cfg, LABELS)
    return {k: v.numpy().copy() for k, v in model.arrays().items()}


def _noise(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in arrays.items()}


@pytest.fixture
def fedadam(cfg: FedTextConfig, model_arrays: dict[str, np.ndarray]):  # noqa: ANN201
    strategy = build_strategy(cfg)
    strategy.current_arrays = dict(model_arrays)
    strategy.m_t = _noise(model_arrays, 1)
    strategy.v_t = {k: np.abs(v) for k, v in _noise(model_arrays, 2).items()}
    return strategy


def _write(out: Path, cfg: FedTextConfig, arrays: dict[str, np.ndarray], strategy, server_round: int = 2) -> Path:  # noqa: ANN001
    doc = {"rounds": [{"round": r, "central": {"accuracy": 0.1 * r}} for r in range(server_round + 1)],
           "final_central": {"accuracy": 0.1 * server_round}, "status": "running"}
    return write_checkpoint(out, server_round, arrays, strategy, doc, cfg.to_mapping())


@pytest.mark.parametrize("freeze", ["head", "none"])
def test_round_trip_restores_arrays_strategy_and_history(tmp_path: Path, cfg: FedTextConfig, freeze: str) -> None:
    cfg = cfg.replace(freeze=freeze)
    model_arrays = {k: v.numpy().copy() for k, v in GlobalModel(cfg, LABELS).arrays().items()}
    fedadam = build_strategy(cfg)
    fedadam.current_arrays = dict(model_arrays)
    fedadam.m_t = _noise(model_arrays, 1)
    fedadam.v_t = {k: np.abs(v) for k, v in _noise(model_arrays, 2).items()}
    trained = _noise(model_arrays, 3)
    folder = _write(tmp_path, cfg, trained, fedadam)
    assert folder == tmp_path / FOLDER
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["round"] == 2 and manifest["strategy"] == "FedAdam"
    assert all(sha256(folder / name) == digest for name, digest in manifest["files"].items())

    checkpoint = load_for_resume(cfg.replace(resume=str(tmp_path), rounds=5))
    assert checkpoint.server_round == 2
    arrays = check_arrays(checkpoint, model_arrays)
    assert list(arrays) == list(model_arrays)
    for k in model_arrays:
        np.testing.assert_array_equal(arrays[k], trained[k])
        assert arrays[k].dtype == model_arrays[k].dtype
    fresh = build_strategy(cfg)
    restore_strategy(fresh, checkpoint)
    for attr in ("current_arrays", "m_t", "v_t"):
        saved, back = getattr(fedadam, attr), getattr(fresh, attr)
        assert list(back) == list(saved)
        for k in saved:
            np.testing.assert_array_equal(back[k], saved[k])
            assert back[k].dtype == saved[k].dtype
    assert [r["round"] for r in checkpoint.metrics["rounds"]] == [0, 1, 2]
    assert checkpoint.config["freeze"] == cfg.freeze


def test_fedavgm_array_record_and_momentum_list_round_trip(
    tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray]
) -> None:
    avgm_cfg = cfg.replace(strategy="fedavgm")
    strategy = build_strategy(avgm_cfg)
    strategy.current_arrays = ArrayRecord({k: Array(v) for k, v in model_arrays.items()})
    strategy.momentum_vector = list(_noise(model_arrays, 4).values())
    _write(tmp_path, avgm_cfg, model_arrays, strategy, server_round=1)
    fresh = build_strategy(avgm_cfg)
    restore_strategy(fresh, read_checkpoint(tmp_path / FOLDER))
    assert isinstance(fresh.current_arrays, ArrayRecord)
    assert list(fresh.current_arrays.keys()) == list(model_arrays)
    for got, want in zip(fresh.current_arrays.to_numpy_ndarrays(), model_arrays.values(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(fresh.momentum_vector) == len(strategy.momentum_vector)
    for got, want in zip(fresh.momentum_vector, strategy.momentum_vector, strict=True):
        np.testing.assert_array_equal(got, want)


def test_fedavg_without_state_and_unset_moments(tmp_path: Path, cfg: FedTextConfig,
                                                model_arrays: dict[str, np.ndarray]) -> None:
    fedavg_cfg = cfg.replace(strategy="fedavg")
    _write(tmp_path, fedavg_cfg, model_arrays, build_strategy(fedavg_cfg), server_round=1)
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.strategy_state == {}
    restore_strategy(build_strategy(fedavg_cfg), checkpoint)
    # A FedAdam that has not aggregated yet has None moments: they come back as None.
    _write(tmp_path, cfg, model_arrays, build_strategy(cfg), server_round=1)
    assert read_checkpoint(tmp_path).strategy_state == {"current_arrays": None, "m_t": None, "v_t": None}


def test_rewrite_keeps_only_the_latest_and_no_temporary_folder(
    tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray], fedadam
) -> None:  # noqa: ANN001
    _write(tmp_path, cfg, model_arrays, fedadam, server_round=1)
    _write(tmp_path, cfg, model_arrays, fedadam, server_round=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER]
    assert read_checkpoint(tmp_path).server_round == 2


def test_crash_between_renames_falls_back_to_the_previous_checkpoint(
    tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray], fedadam
) -> None:  # noqa: ANN001
    _write(tmp_path, cfg, model_arrays, fedadam, server_round=1)
    (tmp_path / FOLDER).rename(tmp_path / f"{FOLDER}.old")
    assert read_checkpoint(tmp_path).server_round == 1


@pytest.mark.parametrize("name", ["model.npz", "strategy.npz", "strategy.json", "metrics.json", "config.json"])
def test_tampered_file_is_named(tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray],
                                fedadam, name: str) -> None:  # noqa: ANN001
    folder = _write(tmp_path, cfg, model_arrays, fedadam)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"'{folder / name}' does not match its SHA-256") as info:
        read_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


def test_missing_file_is_named(tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray],
                               fedadam) -> None:  # noqa: ANN001
    folder = _write(tmp_path, cfg, model_arrays, fedadam)
    (folder / "strategy.npz").unlink()
    with pytest.raises(CheckpointError, match=f"'{folder / 'strategy.npz'}' is missing"):
        read_checkpoint(folder)


def test_unreadable_npz_with_matching_hash_is_named(
    tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray], fedadam
) -> None:  # noqa: ANN001
    folder = _write(tmp_path, cfg, model_arrays, fedadam)
    (folder / "model.npz").write_bytes(b"not a zip file")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["model.npz"] = sha256(folder / "model.npz")
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"'{folder / 'model.npz'}': unreadable npz"):
        read_checkpoint(folder)


def test_other_format_version_is_refused(tmp_path: Path, cfg: FedTextConfig,
                                         model_arrays: dict[str, np.ndarray], fedadam) -> None:  # noqa: ANN001
    folder = _write(tmp_path, cfg, model_arrays, fedadam)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["version"] = 99
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format version 99"):
        read_checkpoint(folder)


def test_no_checkpoint_in_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize(("key", "value"), [("freeze", "none"), ("model", "/elsewhere/model"),
                                            ("strategy", "fedyogi"), ("seed", 7), ("clients", 4),
                                            ("num-hidden-layers", 2), ("partition", "dirichlet:0.5")])
def test_mismatched_identity_key_is_named(tmp_path: Path, cfg: FedTextConfig,
                                          model_arrays: dict[str, np.ndarray], fedadam,
                                          key: str, value: object) -> None:  # noqa: ANN001
    _write(tmp_path, cfg, model_arrays, fedadam)
    other = FedTextConfig.from_mapping({**cfg.to_mapping(), key: value, "resume": str(tmp_path)})
    with pytest.raises(CheckpointError, match=f"config key '{key}'") as info:
        load_for_resume(other)
    assert "\n" not in str(info.value)


def test_more_rounds_and_other_lr_are_fine_fewer_rounds_are_not(
    tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray], fedadam
) -> None:  # noqa: ANN001
    _write(tmp_path, cfg, model_arrays, fedadam, server_round=2)
    assert load_for_resume(cfg.replace(resume=str(tmp_path), rounds=10, lr=1e-4)).server_round == 2
    with pytest.raises(CheckpointError, match="config key 'rounds'"):
        load_for_resume(cfg.replace(resume=str(tmp_path), rounds=1))


def test_shape_mismatch_is_named(tmp_path: Path, cfg: FedTextConfig,
                                 model_arrays: dict[str, np.ndarray], fedadam) -> None:  # noqa: ANN001
    name = next(iter(model_arrays))
    bad = {**model_arrays, name: np.zeros((3, 3), dtype=np.float32)}
    _write(tmp_path, cfg, bad, fedadam)
    with pytest.raises(CheckpointError, match=f"parameter '{name}' has shape"):
        check_arrays(read_checkpoint(tmp_path), model_arrays)
    missing = dict(list(model_arrays.items())[1:])
    _write(tmp_path, cfg, missing, fedadam)
    with pytest.raises(CheckpointError, match=f"no array for parameter '{name}'"):
        check_arrays(read_checkpoint(tmp_path), model_arrays)


def test_strategy_class_mismatch_is_named(tmp_path: Path, cfg: FedTextConfig,
                                          model_arrays: dict[str, np.ndarray], fedadam) -> None:  # noqa: ANN001
    _write(tmp_path, cfg, model_arrays, fedadam)
    with pytest.raises(CheckpointError, match="written by strategy FedAdam"):
        restore_strategy(build_strategy(cfg.replace(strategy="fedyogi")), read_checkpoint(tmp_path))


def test_run_folder_of_a_checkpoint_or_run_folder(tmp_path: Path, cfg: FedTextConfig,
                                                  model_arrays: dict[str, np.ndarray], fedadam) -> None:  # noqa: ANN001
    _write(tmp_path, cfg, model_arrays, fedadam)
    assert run_folder(tmp_path) == tmp_path
    assert run_folder(tmp_path / FOLDER) == tmp_path


def test_cli_resume_from_corrupt_checkpoint_exits_2_with_one_line(
    tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray], fedadam
) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    # The config the CLI below builds: the checkpoint must differ from it only by corruption.
    cli_cfg = cfg.replace(out=str(run), resume=str(run))
    folder = _write(run, cli_cfg, model_arrays, fedadam)
    assert cli_cfg.freeze == "head"
    with (folder / "strategy.npz").open("r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "simulate", "--resume", str(run),
         "--data", "packaged:bbc_news", "--num-hidden-layers", "1", "--freeze", "head", "--strategy", "fedadam",
         "--no-secagg", "--min-clients", "2"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedtext: error: checkpoint file ")
    assert "strategy.npz" in lines[0]
    assert not (run / ".flwr").exists()  # no SuperLink was started


def test_simulate_resume_starts_from_the_checkpoint_config_in_the_same_folder(
    tmp_path: Path, cfg: FedTextConfig, model_arrays: dict[str, np.ndarray], fedadam
) -> None:  # noqa: ANN001
    from common.config import given_keys
    from server.checkpoint import resumed_config
    from simulations.cli import build_parser
    from simulations.simulate import check_resume, prepare_config

    run = tmp_path / "run"
    _write(run, cfg.replace(out=str(run), lr=1e-3), model_arrays, fedadam, server_round=1)
    args = build_parser().parse_args(["simulate", "--resume", str(run), "--rounds", "5"])
    resumed = prepare_config(resumed_config(given_keys(args)))
    assert resumed.out == str(run.resolve()) and resumed.resume == str(run.resolve())
    assert (resumed.rounds, resumed.lr, resumed.freeze, resumed.strategy) == (5, 1e-3, "head", "fedadam")
    check_resume(resumed)  # compatible: no error

    args = build_parser().parse_args(["simulate", "--resume", str(run / FOLDER), "--out", str(tmp_path / "b")])
    assert resumed_config(given_keys(args)).out == str(tmp_path / "b")

    args = build_parser().parse_args(["simulate", "--resume", str(run), "--freeze", "none"])
    with pytest.raises(CheckpointError, match="config key 'freeze'"):
        check_resume(prepare_config(resumed_config(given_keys(args))))


def test_server_resume_flag_and_same_folder(tmp_path: Path, cfg: FedTextConfig,
                                            model_arrays: dict[str, np.ndarray], fedadam) -> None:  # noqa: ANN001
    from server.launch import _config
    from simulations.cli import build_parser

    run = tmp_path / "run"
    _write(run, cfg.replace(out=str(run)), model_arrays, fedadam, server_round=1)
    args = build_parser().parse_args(["server", "--insecure", "--resume", str(run)])
    resumed = _config(args)
    assert resumed.out == str(run.resolve()) and resumed.resume == str(run.resolve())
    assert resumed.strategy == "fedadam" and resumed.freeze == "head"
