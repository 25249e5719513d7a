"""FedTextConfig: validation, coercion, the pyproject defaults and the command line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import tomllib

from common.config import FedTextConfig, add_config_arguments, config_from_args
from common.errors import ConfigError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_defaults_validate() -> None:
    cfg = FedTextConfig()
    assert FedTextConfig.from_mapping(cfg.to_mapping()) == cfg
    assert cfg.label_names == []


def test_from_mapping_coerces_int_to_float_and_numeric_strings() -> None:
    cfg = FedTextConfig.from_mapping({"lr": 0.001, "local-epochs": 2, "server-momentum": 0,
                                      "rounds": "4", "test_fraction": "0.25", "max-length": 48.0})
    assert cfg.local_epochs == 2.0 and isinstance(cfg.local_epochs, float)
    assert cfg.server_momentum == 0.0 and isinstance(cfg.server_momentum, float)
    assert cfg.rounds == 4 and isinstance(cfg.rounds, int)
    assert cfg.test_fraction == 0.25
    assert cfg.max_length == 48 and isinstance(cfg.max_length, int)


def test_from_mapping_reads_toml_spelled_booleans_from_key_value_lines() -> None:
    assert FedTextConfig.from_mapping({"secagg": "false"}).secagg is False
    assert FedTextConfig.from_mapping({"secagg": "true"}).secagg is True


def test_from_mapping_rejects_unknown_key() -> None:
    with pytest.raises(ConfigError, match="'learning-rate'"):
        FedTextConfig.from_mapping({"learning-rate": 0.1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rounds", "three"),
        ("rounds", 2.5),
        ("rounds", True),
        ("lr", "fast"),
        ("lr", [0.1]),
        ("model", None),
        ("local-epochs", False),
        ("secagg", "no"),
        ("secagg", "False"),
    ],
)
def test_from_mapping_rejects_wrong_type_naming_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        FedTextConfig.from_mapping({key: value})


BAD_VALUES = [
    ("dp", "local"),
    ("dp-epsilon", 0.0),
    ("dp-epsilon", -1.0),
    ("dp-epsilon", float("inf")),
    ("dp-delta", 0.0),
    ("dp-delta", 1.0),
    ("dp-clip", 0.0),
    ("dp-accountant", "moments"),
    ("model", "  "),
    ("num-hidden-layers", -1),
    ("freeze", "top:2"),
    ("freeze", "bottom:"),
    ("lora-r", 0),
    ("lora-alpha", 0),
    ("lora-dropout", 1.0),
    ("max-length", 4),
    ("max-length", 10000),
    ("data", ""),
    ("text-column", ""),
    ("label-column", ""),
    ("label-column", "text"),
    ("labels", "only"),
    ("labels", "a,b,a"),
    ("max-examples", -1),
    ("max-test-examples", -1),
    ("test-fraction", 0.0),
    ("test-fraction", 1.0),
    ("client-eval-fraction", 1.0),
    ("client-eval-fraction", -0.1),
    ("clients", 0),
    ("clients", 1001),
    ("partition", "random"),
    ("partition", "dirichlet:0"),
    ("partition", "dirichlet:abc"),
    ("partition", "column:"),
    ("client-cpus", 0),
    ("client-gpus", -0.5),
    ("batch-size", 0),
    ("local-epochs", 0.0),
    ("local-steps", -1),
    ("min-local-steps", -1),
    ("lr", -1e-4),
    ("lr", 1.0),
    ("lr-schedule", "sideways"),
    ("pooling", "max"),
    ("weight-decay", -0.1),
    ("warmup-ratio", 1.0),
    ("max-grad-norm", -1.0),
    ("grad-accum-steps", 0),
    ("proximal-mu", -0.01),
    ("rounds", 0),
    ("strategy", "fedsgd"),
    ("server-lr", -1.0),
    ("server-tau", -1e-3),
    ("server-momentum", 1.0),
    ("fraction-train", 0.0),
    ("fraction-train", 1.5),
    ("fraction-evaluate", 1.5),
    ("min-clients", 0),
    ("round-timeout", -1.0),
    ("out", " "),
    # SecAgg+ keys: SecAggParams checks them, fedtext reports them under its key names.
    ("secagg-neighbours", 1),
    ("secagg-threshold", 0.4),
    ("secagg-clip", 0.0),
    ("secagg-bits", 0),
    ("secagg-bits", 31),  # 3 clients x (2^31 - 1) overflows the 32-bit sum
    ("secagg-max-weight", 0),
    ("secagg-timeout", 0.0),
]


def test_the_secagg_encoding_is_sized_for_the_clients_a_round_sums() -> None:
    # 24-bit values: 256 summands fit in 32 bits. A round of 1,000 sampled clients
    # would overflow; 1,000 clients of which a round samples 10 do not.
    FedTextConfig(clients=1000, fraction_train=0.01, min_clients=10, secagg_bits=24)
    with pytest.raises(ConfigError, match=r"config key 'secagg-bits': bits=24 too large for 1000 clients"):
        FedTextConfig(clients=1000, fraction_train=1.0, min_clients=10, secagg_bits=24)
    with pytest.raises(ConfigError, match=r"bits=24 too large for 300 clients"):
        FedTextConfig(clients=1000, fraction_train=0.01, min_clients=300, secagg_bits=24)


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_bad_value_names_its_key(key: str, value: object) -> None:
    if key not in FedTextConfig.keys():
        pytest.skip(f"no config key '{key}' in this version")
    with pytest.raises(ConfigError) as info:
        FedTextConfig.from_mapping({key: value})
    message = str(info.value)
    assert f"config key '{key}'" in message
    assert "\n" not in message


def test_every_validated_key_has_a_bad_value_row() -> None:
    # Keys with no constraint beyond their type: anything of the right type is fine.
    free = {"test-data", "seed", "secagg", "resume", "central-eval", "trial-queue"}
    covered = {k for k, _ in BAD_VALUES}
    assert set(FedTextConfig.keys()) - free - covered == set()


def test_local_steps_allows_zero_epochs() -> None:
    assert FedTextConfig(local_epochs=0.0, local_steps=3).local_steps == 3


def test_replace_validates() -> None:
    with pytest.raises(ConfigError, match="'batch-size'"):
        FedTextConfig().replace(batch_size=0)


def test_label_names_are_stripped() -> None:
    assert FedTextConfig(labels=" rotten , fresh ").label_names == ["rotten", "fresh"]


def test_pyproject_lists_exactly_the_keys_with_equal_defaults() -> None:
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert list(app_config) == FedTextConfig.keys()
    defaults = FedTextConfig().to_mapping()
    for key, value in app_config.items():
        assert value == defaults[key], key
        assert type(value) is type(defaults[key]), key
    # And the pyproject table itself is a valid config.
    assert FedTextConfig.from_mapping(app_config) == FedTextConfig()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser


def test_cli_flags_not_given_keep_defaults() -> None:
    args = _parser().parse_args([])
    assert all(getattr(args, f.name) is None for f in dataclasses.fields(FedTextConfig))
    assert config_from_args(args) == FedTextConfig()


def test_cli_flags_given_round_trip() -> None:
    cfg = FedTextConfig(lr=1e-4, rounds=5, freeze="bottom:2", partition="dirichlet:0.5",
                        labels="rotten,fresh", local_epochs=0.5, seed=0, dp="record")
    argv = []
    for key, value in cfg.to_mapping().items():
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no-{key}")
        else:
            argv += [f"--{key}", str(value)]
    assert config_from_args(_parser().parse_args(argv)) == cfg


def test_cli_bool_flags() -> None:
    if "secagg" not in FedTextConfig.keys():
        pytest.skip("no boolean config key in this version")
    assert config_from_args(_parser().parse_args(["--no-secagg"])).secagg is False
    assert config_from_args(_parser().parse_args([])).secagg is FedTextConfig().secagg


def test_cli_seed_zero_is_a_given_flag() -> None:
    # 0 is falsy: a flag given as 0 must still override the default of 42.
    assert config_from_args(_parser().parse_args(["--seed", "0"])).seed == 0


def test_cli_overrides_and_validation() -> None:
    args = _parser().parse_args(["--rounds", "7"])
    cfg = config_from_args(args, out="elsewhere")
    assert (cfg.rounds, cfg.out) == (7, "elsewhere")
    with pytest.raises(ConfigError, match="'rounds'"):
        config_from_args(_parser().parse_args(["--rounds", "0"]))


def test_cli_only_subset() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, only=["lr", "rounds"])
    args = parser.parse_args(["--lr", "0.001"])
    assert config_from_args(args) == FedTextConfig(lr=0.001)
    with pytest.raises(SystemExit):
        parser.parse_args(["--seed", "1"])


def test_readme_lists_every_key_with_its_default_and_help() -> None:
    from pathlib import Path

    from common.config import config_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    begin = readme.index("<!-- config:begin")
    table = readme[readme.index("\n", begin) + 1 : readme.index("<!-- config:end -->")].strip()
    assert table == config_table(), "README's config table is stale: regenerate it with config_table()"


def test_dp_delta_must_be_below_one_over_the_clients_for_client_level_dp() -> None:
    with pytest.raises(ConfigError, match="config key 'dp-delta': expected below 1/clients"):
        FedTextConfig(dp="client", clients=10, dp_delta=0.2)
    assert FedTextConfig(dp="client", clients=10, dp_delta=0.05).dp_delta == 0.05


def test_dp_flags_without_a_dp_mode_are_refused() -> None:
    from common.config import check_dp_flags

    with pytest.raises(ConfigError, match="config key 'dp-epsilon': needs dp record or dp client"):
        check_dp_flags({"dp-epsilon": 3.0})
    check_dp_flags({"dp": "record", "dp-epsilon": 3.0})
    check_dp_flags({"lr": 1e-4})


def test_client_level_dp_weighs_every_client_once_under_secagg() -> None:
    from common.config import secagg_params

    assert secagg_params(FedTextConfig(dp="client", dp_delta=1e-3)).max_weight == 1
    assert secagg_params(FedTextConfig()).max_weight == 10000
