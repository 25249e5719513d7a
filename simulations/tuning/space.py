"""The search space of a tuning study: which config keys vary, and over what.

A space is a list of :class:`Param`, one per config key. It comes from

- flags, ``--param KEY=SPEC`` (repeatable), where SPEC is
  ``LOW..HIGH`` (a range of the key's type), ``LOW..HIGH:log`` (sampled on a
  log scale), ``LOW..HIGH:step=S`` (a grid), or ``A,B,C`` (a choice);
- a TOML file, ``--space FILE``, one table per key::

      [lr]
      low = 1e-5
      high = 1e-3
      log = true

      [strategy]
      choices = ["fedavg", "fedadam"]

- or, with neither, :func:`default_space`: the learning rate around the
  freezing policy's default, the batch size and the local epochs.

Every bound and choice is checked against the config (``FedTextConfig``) when
the space is read, so a bad space fails before any trial starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import NOT_TUNABLE, FedTextConfig, read_toml, to_key
from common.errors import ConfigError
from common.recipe import peak_lr

if TYPE_CHECKING:
    import optuna

@dataclass(frozen=True)
class Param:
    """One config key of the space.

    Attributes
    ----------
    key : str
        Kebab-case config key.
    kind : str
        ``float``, ``int`` or ``categorical``.
    low, high : float or int, optional
        Bounds of a range (inclusive).
    log : bool
        Sample a range on a log scale.
    step : float or int, optional
        Grid step of a range.
    choices : tuple
        Values of a categorical parameter.
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask the trial for a value of this key."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid(self) -> list[Any] | None:
        """Every value of a discrete parameter (for a grid search); None for a continuous one."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is None:
            return list(range(int(self.low), int(self.high) + 1)) if self.kind == "int" and not self.log else None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        values = [self.low + i * self.step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def describe(self) -> str:
        """``lr in [1e-05, 0.001] (log)`` or ``strategy in {fedavg, fedadam}``."""
        if self.kind == "categorical":
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        extra = " (log)" if self.log else (f" (step {self.step:g})" if self.step else "")
        return f"{self.key} in [{self.low:g}, {self.high:g}]{extra}"


@dataclass(frozen=True)
class SearchSpace:
    """The parameters a study varies, in a fixed order."""

    params: tuple[Param, ...]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Kebab-case key -> value for one trial."""
        return {p.key: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list[Any]]:
        """The full grid (``GridSampler``'s search space); every parameter must be discrete."""
        grid = {}
        for p in self.params:
            values = p.grid()
            if values is None:
                raise ConfigError(
                    f"--sampler grid: parameter '{p.key}' is continuous; give it choices or a step"
                )
            grid[p.key] = values
        return grid

    def to_json(self) -> str:
        """Canonical text of the space: a stored study is resumed only with the same one."""
        return json.dumps([{k: v for k, v in asdict(p).items() if v not in (None, (), False)}
                           for p in self.params], sort_keys=True)

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.params)


# --- reading a space -------------------------------------------------------------------

_FIELD_TYPES = {to_key(f.name): f.type for f in fields(FedTextConfig)}


def _field_kind(key: str, where: str) -> str:
    if key not in _FIELD_TYPES:
        raise ConfigError(f"{where}: unknown config key '{key}'")
    if key in NOT_TUNABLE:
        raise ConfigError(
            f"{where}: '{key}' cannot be tuned (it changes the rows the objective is measured on, "
            "or where the run is written); set it as a flag instead"
        )
    return str(_FIELD_TYPES[key])


def _number(text: Any, kind: str, key: str, where: str) -> float | int:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: '{key}' bound {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' bound {text!r} is not a finite number")
    if kind == "int":
        if not value.is_integer():
            raise ConfigError(f"{where}: '{key}' takes whole numbers, got bound {text!r}")
        return int(value)
    return value


def _choice(text: Any, kind: str, key: str, where: str) -> Any:
    if kind == "bool":
        if isinstance(text, bool):
            return text
        if str(text).lower() in ("true", "false"):
            return str(text).lower() == "true"
        raise ConfigError(f"{where}: '{key}' takes true or false, got {text!r}")
    if kind in ("int", "float"):
        return _number(text, kind, key, where)
    return str(text)


def make_param(key: str, spec: dict[str, Any], where: str) -> Param:
    """A checked :class:`Param` from a table (``low``/``high``/``log``/``step`` or ``choices``)."""
    kind = _field_kind(key, where)
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
    if unknown:
        raise ConfigError(f"{where}: '{key}' has unknown field '{unknown[0]}' "
                          "(expected low, high, log, step or choices)")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: '{key}' gives choices and a range; give one of the two")
        raw = spec["choices"]
        if not isinstance(raw, list | tuple) or not raw:
            raise ConfigError(f"{where}: '{key}' choices must be a non-empty list")
        choices = tuple(_choice(v, kind, key, where) for v in raw)
        if len(set(choices)) != len(choices):
            raise ConfigError(f"{where}: '{key}' lists a choice twice")
        return Param(key, "categorical", choices=choices)
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: '{key}' is not numeric; give it choices (A,B,...)")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: '{key}' needs low and high (or choices)")
    low, high = (_number(spec[b], kind, key, where) for b in ("low", "high"))
    if not low < high:
        raise ConfigError(f"{where}: '{key}' range is empty or inverted: low {low:g} >= high {high:g}")
    log = bool(spec.get("log", False))
    step = _number(spec["step"], kind, key, where) if spec.get("step") is not None else None
    if log and low <= 0:
        raise ConfigError(f"{where}: '{key}' log range needs low > 0, got {low:g}")
    if log and step is not None:
        raise ConfigError(f"{where}: '{key}' cannot be both log and stepped")
    if step is not None and not 0 < step <= high - low:
        raise ConfigError(f"{where}: '{key}' step {step:g} must be in (0, high - low]")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def parse_param_flag(text: str) -> Param:
    """``--param KEY=SPEC`` (see the module docstring)."""
    where = f"--param '{text}'"
    key, sep, spec = text.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise ConfigError(f"{where}: expected KEY=LOW..HIGH[:log|:step=S] or KEY=A,B,...")
    if ".." not in spec:
        return make_param(key, {"choices": [c.strip() for c in spec.split(",") if c.strip()]}, where)
    bounds, _, option = spec.partition(":")
    low, _, high = bounds.partition("..")
    table: dict[str, Any] = {"low": low.strip(), "high": high.strip()}
    if option == "log":
        table["log"] = True
    elif option.startswith("step="):
        table["step"] = option.removeprefix("step=")
    elif option:
        raise ConfigError(f"{where}: unknown option ':{option}' (expected :log or :step=S)")
    return make_param(key, table, where)


def read_space_file(path: str | Path) -> list[Param]:
    """Parameters of a TOML space file (one table per key)."""
    where = f"--space '{path}'"
    doc = read_toml(path, "--space")
    params = []
    for key, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: '{key}' must be a table ([{key}] with low/high or choices)")
        params.append(make_param(key, table, where))
    if not params:
        raise ConfigError(f"{where}: no parameter in it")
    return params


def default_space(base: FedTextConfig) -> list[Param]:
    """Learning rate around the freezing policy's default, batch size and local epochs.

    Under DP, the knob that trades noise against signal too: the expected
    batch of a DP-SGD step (``grad-accum-steps``: noise per row falls as the
    batch grows), or the clip of a client's update. Each trial spends its own
    epsilon on the clients' rows: a study over private data spends more than
    one run (docs/PRIVACY.md).
    """
    lr = peak_lr(base)
    params = [
        Param("lr", "float", low=lr / 10, high=lr * 10, log=True),
        Param("batch-size", "categorical", choices=(8, 16, 32)),
        Param("local-epochs", "categorical", choices=(0.5, 1.0, 2.0)),
    ]
    if base.dp == "record":
        params.append(Param("grad-accum-steps", "categorical", choices=(1, 2, 4)))
    elif base.dp == "client":
        params.append(Param("dp-clip", "float", low=0.1, high=10.0, log=True))
    return params


def build_space(base: FedTextConfig, flags: list[str], file: str | None) -> SearchSpace:
    """The study's space from ``--param`` flags and ``--space FILE`` (default when neither).

    Each bound and choice must make a valid config on top of ``base``.
    """
    params = read_space_file(file) if file else []
    params += [parse_param_flag(text) for text in flags]
    if not params:
        params = default_space(base)
    keys = [p.key for p in params]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"search space: '{twice[0]}' is given twice")
    for p in params:
        values = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
        for value in values:
            try:
                base.replace(**{p.key.replace("-", "_"): value})
            except ConfigError as exc:
                raise ConfigError(f"search space: {p.describe()}: {exc}") from None
    return SearchSpace(tuple(params))
