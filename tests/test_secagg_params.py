"""SecAggParams: range checks and overflow checks, each naming the field."""

from __future__ import annotations

import pytest

from common.secagg.params import SecAggParams


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_neighbours", 1),
        ("num_neighbours", 0),
        ("num_neighbours", 2.5),
        ("threshold", 0),
        ("threshold", 1),
        ("threshold", 10),  # > num_neighbours + 1 share holders
        ("threshold", 4),  # 2t <= k + 1 = 9
        ("threshold", 0.5),
        ("threshold", 0.0),
        ("threshold", 1.5),
        ("threshold", -0.7),
        ("threshold", True),
        ("clip", 0.0),
        ("clip", -1.0),
        ("clip", float("inf")),
        ("clip", float("nan")),
        ("bits", 0),
        ("bits", 32),
        ("bits", -3),
        ("max_weight", 0),
        ("max_weight", -5),
        ("stage_timeout_s", 0),
        ("stage_timeout_s", -1.0),
    ],
)
def test_invalid_ranges_are_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SecAggParams(**{field: value})


def test_valid_params_are_accepted() -> None:
    SecAggParams(num_neighbours=2, threshold=2, clip=0.1, bits=1, max_weight=1, stage_timeout_s=0.5)
    SecAggParams(num_neighbours=8, threshold=5)
    SecAggParams(threshold=1.0, bits=31)


def test_bits_overflow_is_rejected() -> None:
    params = SecAggParams(bits=22, max_weight=1)
    params.validate(1023)  # 1023 * (2**22 - 1) < 2**32
    with pytest.raises(ValueError, match=r"^bits=22 too large for 1025 clients"):
        params.validate(1025)


def test_weight_overflow_is_rejected() -> None:
    params = SecAggParams(bits=8, max_weight=2**20)
    params.validate(4095)
    with pytest.raises(ValueError, match=r"^max_weight=1048576 too large for 4096 clients"):
        params.validate(4096)


def test_overflow_message_is_one_line() -> None:
    with pytest.raises(ValueError) as info:
        SecAggParams(bits=31).validate(3)
    assert "\n" not in str(info.value)


def test_num_clients_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_clients"):
        SecAggParams().validate(0)


@pytest.mark.parametrize(
    "k,threshold,degree,expected",
    [(8, 0.6, 8, 6), (8, 0.6, 2, 2), (8, 0.51, 4, 3), (8, 1.0, 6, 7), (8, 5, 8, 5), (5, 4, 6, 4), (9, 0.6, 9, 6)],
)
def test_threshold_for_degree_is_a_strict_majority(k: int, threshold: float, degree: int, expected: int) -> None:
    # Shares go to the d neighbours and the client itself: d + 1 holders.
    # (5, 4, 6, 4): odd k=5 gives degree 6 (7 holders); t=4 is already > 7/2.
    t = SecAggParams(num_neighbours=k, threshold=threshold).threshold_for_degree(degree)
    assert t == expected
    assert 2 * t > degree + 1


def test_dict_round_trip() -> None:
    params = SecAggParams(num_neighbours=4, threshold=3, clip=0.5, bits=16, max_weight=77, stage_timeout_s=9.0)
    assert SecAggParams.from_dict(params.to_dict()) == params
