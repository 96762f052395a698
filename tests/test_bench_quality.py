"""bench/bench_quality.py's bookkeeping: critic metrics against gold, means over seeds, and the
issue-12 target checks, on hand-made result records (the pipeline itself runs in the benchmark)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_quality.py"


@pytest.fixture(scope="module")
def bq():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_critic_metrics_rank_errors_and_count_the_top_b(bq):
    wrong = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    perfect = bq.critic_metrics(np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.1, 0.0, 0.2]), wrong, 2)
    assert perfect == {"auroc": 1.0, "auprc": 1.0, "prec@B": 1.0}
    reversed_ = bq.critic_metrics(np.array([0.0, 0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), wrong, 4)
    assert reversed_["auroc"] == 0.0 and reversed_["prec@B"] == 0.0
    # NaN scores (no critique) are left out, a single class has no AUROC
    assert bq.critic_metrics(np.array([0.9, np.nan, 0.2]), np.array([1, 1, 0], bool), 1)["auroc"] == 1.0
    assert bq.critic_metrics(np.array([0.5, 0.2]), np.array([0, 0], bool), 1)["auroc"] is None


def _rows(act_linear: list[float], random_linear: list[float]) -> list[dict]:
    rows = [
        {
            "key": "toy|zero", "kind": "zero", "dataset": "fashion", "n": 100, "n_test": 50, "machine_acc": 0.7,
            "consistency": {"auroc": 0.92, "auprc": 0.6, "prec@B": 0.7},
            "confidence": {"auroc": 0.8, "auprc": 0.5, "prec@B": 0.5},
        }
    ]  # fmt: skip
    for seed, (a, r) in enumerate(zip(act_linear, random_linear, strict=True)):
        rows.append(
            {"key": f"f|{seed}", "kind": "full", "dataset": "fashion", "seed": seed,
             "human": {"linear": 0.80, "mlp": 0.80}, "machine": {"linear": 0.70, "mlp": 0.70}}
        )  # fmt: skip
        for rule, acc in (("threshold", a), ("random", r)):
            rows.append(
                {"key": f"{rule}|{seed}", "kind": "act", "dataset": "fashion", "rule": rule, "budget": 20,
                 "seed": seed, "final_acc": 0.9, "refined_acc": 0.8, "reviews": 20,
                 "critic": {"auroc": 0.96, "auprc": 0.7, "prec@B": 0.65},
                 "downstream": {"linear": acc, "mlp": 0.79}}
            )  # fmt: skip
    return rows


def test_summary_closes_the_gap_and_targets_say_met(bq):
    summary = bq.summarise(_rows([0.78, 0.79, 0.80], [0.74, 0.75, 0.76]))
    cell = summary["fashion"]["cells"][("threshold", 20)]
    assert cell["seeds"] == 3
    assert cell["linear"][0] == pytest.approx(0.79)
    assert cell["linear"][1] == pytest.approx(np.std([0.78, 0.79, 0.80], ddof=1) / np.sqrt(3))
    assert bq._share(0.80, 0.70, cell["linear"][0]) == pytest.approx(0.9)
    text = " ".join(bq.targets(summary))
    assert "never hurts (linear): met" in text
    assert "beats random review (linear): met" in text
    assert ">= 70% closed at 20% (linear, best rule threshold): 90% met" in text


def test_targets_say_missed_when_act_falls_below_machine_and_random(bq):
    summary = bq.summarise(_rows([0.60, 0.62, 0.61], [0.74, 0.75, 0.76]))
    text = " ".join(bq.targets(summary))
    assert "never hurts (linear): missed at threshold@20%" in text
    assert "beats random review (linear): missed at threshold@20%" in text
    assert "-90% missed" in text
    assert "gap <= 2 points at 20% on at least two datasets: missed" in text
