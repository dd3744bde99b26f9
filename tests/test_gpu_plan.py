from __future__ import annotations

import pytest

from primerl_modal.core.gpu_plan import plan_gpus, split
from primerl_modal.core.gpus import catalogue, default_resources
from primerl_modal.errors import PlanError, PrmError

CAT = catalogue()


@pytest.mark.parametrize(
    ("count", "ratio", "trainer", "inference"),
    [(8, 0.25, 2, 6), (8, 0.99, 7, 1), (8, 0.01, 1, 7), (2, 0.5, 1, 1), (2, 0.25, 1, 1),
     (6, 0.25, 2, 4), (4, 0.5, 2, 2), (3, 0.5, 2, 1), (5, 0.7, 4, 1)],
)
def test_split_rounds_half_up_and_never_overcommits(count, ratio, trainer, inference):
    assert split(count, ratio) == (trainer, inference)
    assert trainer + inference == count


def test_current_dialect_gives_inference_the_low_ids():
    g = plan_gpus(CAT, "H100", 8, 0.25, 2)
    assert (g.trainer, g.inference, g.tp, g.dp) == (2, 6, 2, 3)
    assert g.inference_gpu_ids == (0, 1, 2, 3, 4, 5)
    assert g.trainer_gpu_ids == (6, 7)
    assert g.modal_gpu == "H100:8"


def test_2025_10_dialect_gives_the_trainer_the_low_ids():
    g = plan_gpus(CAT, "H100", 8, 0.25, 1, trainer_first=True)
    assert g.trainer_gpu_ids == (0, 1)
    assert g.inference_gpu_ids == (2, 3, 4, 5, 6, 7)


def test_tp_that_does_not_divide_names_the_valid_ones():
    with pytest.raises(PlanError) as e:
        plan_gpus(CAT, "H100", 8, 0.25, 4)
    assert "valid --tp values: 1, 2, 3, 6" in e.value.one_line()


def test_alias_and_case_resolve_to_modal_spelling():
    assert plan_gpus(CAT, "a100", 2, 0.5, 1).type == "A100-40GB"


def test_unknown_type_lists_known_ones():
    with pytest.raises(PrmError) as e:
        plan_gpus(CAT, "H1000", 8, 0.5, 1)
    line = e.value.one_line()
    assert "unknown GPU type 'H1000'" in line
    assert "A100-40GB, A100-80GB, H100, H200, B200" in line


@pytest.mark.parametrize(("kind", "count", "limit"), [("H100", 9, 8), ("A10", 5, 4)])
def test_count_over_the_types_max_is_refused(kind, count, limit):
    with pytest.raises(PlanError, match=f"at most {limit}"):
        plan_gpus(CAT, kind, count, 0.5, 1)


def test_one_gpu_is_refused():
    with pytest.raises(PlanError, match="at least 2 GPUs"):
        plan_gpus(CAT, "H100", 1, 0.5, 1)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_ratio_outside_open_interval_is_refused(ratio):
    with pytest.raises(PlanError, match="between 0 and 1"):
        plan_gpus(CAT, "H100", 8, ratio, 1)


def test_explicit_counts_win_and_must_agree_with_count():
    g = plan_gpus(CAT, "H100", None, 0.5, 1, trainer=3, inference=5)
    assert (g.count, g.trainer, g.inference) == (8, 3, 5)
    with pytest.raises(PlanError, match="does not equal"):
        plan_gpus(CAT, "H100", 4, 0.5, 1, trainer=3, inference=5)


def test_price_override_changes_price_only():
    cat = catalogue({"h100": 3.0})
    assert cat.get("H100").usd_per_hour == 3.0
    assert cat.get("H200").usd_per_hour == 4.54


def test_cpu_and_memory_prices_are_overridden_like_gpu_prices():
    cat = catalogue({"cpu": 0.05, "Memory": 0.01, "H100": 3.0})
    assert (cat.usd_per_core_hour, cat.usd_per_gib_hour) == (0.05, 0.01)
    assert cat.get("H100").usd_per_hour == 3.0
    default = catalogue()
    assert (default.usd_per_core_hour, default.usd_per_gib_hour) == (0.04716, 0.007992)
    with pytest.raises(PrmError, match="non-negative"):
        catalogue({"CPU": -1})


@pytest.mark.parametrize(("count", "cpu", "memory_mb"), [(2, 8.0, 32768), (8, 32.0, 131072)])
def test_default_reservation_grows_with_the_gpus(count, cpu, memory_mb):
    assert default_resources(count) == (cpu, memory_mb)
