"""What a study leaves in its folder, rewritten after every trial.

=================  ==============================================================
``trials.csv``     one row per trial: number, state, objective, parameters, the
``trials.json``    value after each round, wall and round seconds, folder
``history.png``    optimization history (Optuna's matplotlib plot)
``importance.png`` parameter importances (from 2 completed trials with a varied parameter)
``rounds.png``     every trial's objective by round (pruned trials stop early)
``best.toml``      the base config with the best trial's parameters: ``fedtext
                   simulate|centralized|server --config best.toml`` and
                   ``flwr run . --run-config best.toml`` take it
``best.json``      the best trial, its validation value, and its model's figures
                   on the server's test set (the study's only test figures)
``summary.json``   this session's wall time, time in rounds and the share outside them
=================  ==============================================================
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from common.config import FedTextConfig, toml_value
from common.metrics import summary
from common.plots import pyplot


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            **{f"param:{k}": v for k, v in t.params.items()},
            "rounds": len(attrs.get("values", [])),
            "values": attrs.get("values", []),
            "wall_s": attrs.get("wall_s"),
            "rounds_s": attrs.get("rounds_s"),
            "reason": attrs.get("reason", ""),
            "folder": attrs.get("folder", ""),
        })
    return rows


def write_outputs(study: Any, out: Path, options: Any, session: Any, base: FedTextConfig,
                  best: dict[str, Any] | None = None, plots: bool = True) -> None:
    """Rewrite the study's outputs from the storage (after every trial: the tables only)."""
    import pandas as pd

    rows = trial_rows(study)
    (out / "trials.json").write_text(json.dumps(rows, indent=1) + "\n")
    pd.DataFrame(rows).to_csv(out / "trials.csv", index=False)
    (out / "summary.json").write_text(json.dumps(
        {"study": options.study_name, "objective": options.objective,
         "mode": "centralized" if options.centralized else "federated", **session.summary()}, indent=1) + "\n")
    if plots:
        _plots(study, out, options)
    if best is not None:
        write_best_toml(base, best["params"], out / "best.toml")
        (out / "best.json").write_text(json.dumps(best, indent=1) + "\n")


def _plots(study: Any, out: Path, options: Any) -> None:
    from optuna.trial import TrialState

    plt = pyplot()
    from optuna.visualization import matplotlib as oplt

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        ax = oplt.plot_optimization_history(study)
        ax.figure.savefig(out / "history.png", dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
    if len(complete) >= 2:
        try:
            ax = oplt.plot_param_importances(study)
            ax.figure.savefig(out / "importance.png", dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
        except (ValueError, RuntimeError, ZeroDivisionError):
            pass  # no parameter varied among the completed trials yet
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in study.get_trials(deepcopy=False):
        values = t.user_attrs.get("values", [])
        if values:
            style = "-" if t.state == TrialState.COMPLETE else ":"
            ax.plot(range(1, len(values) + 1), values, style, marker=".", alpha=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel(f"{options.objective} (clients' held-out rows)")
    ax.set_title("trials by round (dotted: pruned or failed)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "rounds.png", dpi=110)
    plt.close(fig)


def write_best_toml(base: FedTextConfig, params: dict[str, Any], path: Path) -> Path:
    """Every config key of the best configuration, as ``--config``/``--run-config`` take it."""
    values = {**base.to_mapping(), **params}
    for key in ("out", "resume"):
        values.pop(key, None)
    values["central-eval"] = True
    lines = ["# fedtext tune: best trial's configuration (the base config + its parameters)"]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate_best(study: Any, base: FedTextConfig, out: Path, echo: Callable[..., None]) -> dict[str, Any] | None:
    """The best trial on the server's test set; other completed trials' models are removed.

    Trials never touch the test set (``central-eval`` off): this is the only
    place the study looks at it, once, for the configuration it chose.
    """
    from common.inference import evaluate_folder_on
    from common.splits import server_test_set

    try:
        best = study.best_trial
    except ValueError:
        echo("no trial completed: nothing to evaluate")
        return None
    folder = Path(best.user_attrs.get("folder", ""))
    test = server_test_set(base)
    metrics = evaluate_folder_on(folder / "model", test.dataset, base.max_length, max(base.batch_size, 32))
    result = {
        "trial": best.number,
        "params": dict(best.params),
        "validation": {"metric": study.user_attrs.get("objective"), "value": best.value},
        "test": {**summary(metrics, ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss")),
                 "num_examples": len(test)},
        "folder": str(folder),
    }
    echo(f"best trial {best.number}: validation {best.value:.4f}; test accuracy "
         f"{result['test']['accuracy']:.4f}, macro F1 {result['test']['f1_macro']:.4f} ({len(test)} rows)")
    # A model per trial is 90 MB at full size: keep the best one only.
    for t in study.get_trials(deepcopy=False):
        other = Path(t.user_attrs.get("folder", ""))
        if not other.name:
            continue
        if t.number != best.number:
            shutil.rmtree(other / "model", ignore_errors=True)
        shutil.rmtree(other / "checkpoint", ignore_errors=True)
    return result
