"""Coverage of the residual-error interval (actlabel.metrics.residual_error_estimate), by simulation.

For each design (rule + uniform share), machine error rate and kind of critic, simulate many
projects, select with actlabel.select, review the selected items, and count how often the
interval contains the true number of wrong labels left among the unreviewed items.  The second
part runs the demo's design (a uniform pilot, then threshold rounds with a 5% uniform share)
and compares the estimate over every round with the one on the last round's draw alone.

    .venv/bin/python bench/bench_residual_coverage.py [--reps 500] [--items 2000] [--part single|rounds|all] [--no-write]

Writes the sections "Residual-error interval coverage" and "Residual-error interval over
rounds" of docs/benchmarks.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from benchdoc import machine_line, write_section  # noqa: E402

from actlabel.metrics import (  # noqa: E402
    ReviewRound,
    residual_error_estimate,
    residual_error_estimate_over_rounds,
)
from actlabel.select import pilot_sample, select, select_round  # noqa: E402

DESIGNS = [
    ("threshold", 0.05),
    ("threshold", 0.10),
    ("threshold", 0.20),
    ("exponential", 0.05),
    ("exponential", 0.0),
]
ERROR_RATES = [0.05, 0.15, 0.30]
CRITICS = ["calibrated", "pessimistic", "overconfident"]


def simulate_project(
    rng: np.random.Generator, n: int, error_rate: float, critic: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return (is_error, error_prob) for one synthetic project.

    calibrated: e ~ Beta(0.6, 0.6 (1 - r) / r) and y ~ Bernoulli(e), so P(y | e) = e exactly.
    pessimistic: y ~ Bernoulli(r), e | error ~ Beta(4, 2), e | correct ~ Beta(1, 6): a good
    ranking (AUROC about 0.95) but probabilities too high on correct labels.
    overconfident: as calibrated, but the critic reports e / 2 (it misses half the risk).
    """
    if critic == "pessimistic":
        y = rng.random(n) < error_rate
        return y, np.where(y, rng.beta(4, 2, n), rng.beta(1, 6, n))
    e = rng.beta(0.6, 0.6 * (1 - error_rate) / error_rate, n)
    y = rng.random(n) < e
    return y, (e if critic == "calibrated" else e / 2.0)


def coverage(
    rule: str, uniform: float, error_rate: float, critic: str, n: int, reps: int, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    budget = int(round(1.2 * error_rate * n))  # paper insight 6: budget near the expected errors
    hits = {"adjusted": 0, "calibrated": 0, "wald": 0}
    width = {"adjusted": 0.0, "calibrated": 0.0, "wald": 0.0}
    halve = 0.0
    truth = 0.0
    not_identifiable = 0
    for _ in range(reps):
        y, e = simulate_project(rng, n, error_rate, critic)
        sel = select(e, budget, rule=rule, uniform=uniform, seed=int(rng.integers(2**31)))
        d = sel.selected
        left = int((y & ~d).sum())
        truth += left
        for method in hits:
            res = residual_error_estimate(
                np.where(d, y, -1), d, sel.review_prob, e,
                interval="wald" if method == "wald" else "adjusted", calibrate=method == "calibrated",
            )  # fmt: skip
            if not res.identifiable:
                not_identifiable += 1
            hits[method] += res.lower <= left <= res.upper
            width[method] += res.upper - res.lower
            if method == "adjusted":
                halve += res.uniform_reviews_to_halve or 0
    return {
        "budget": budget,
        "cov_adjusted": hits["adjusted"] / reps,
        "cov_wald": hits["wald"] / reps,
        "cov_calibrated": hits["calibrated"] / reps,
        "width_calibrated": width["calibrated"] / reps,
        "halve": halve / reps,
        "width_adjusted": width["adjusted"] / reps,
        "width_wald": width["wald"] / reps,
        "mean_left": truth / reps,
        "not_identifiable": not_identifiable,
    }


def pilot_then_rounds(
    e: np.ndarray, budget: int, rounds: int, uniform: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[ReviewRound]]:
    """`actlabel run --budget auto --rounds K` on arrays: a uniform pilot of max(30, 5%) items,
    then the rest of the budget in `rounds` threshold rounds with a `uniform` share.  Returns
    (reviewed, the last round's review_prob, every round's record)."""
    n = e.size
    size = min(max(30, int(np.ceil(0.05 * n))), budget // 2)
    d = np.zeros(n, dtype=bool)
    d[pilot_sample(n, size, seed=seed)] = True
    records = [ReviewRound(np.ones(n, dtype=bool), d.copy(), np.full(n, size / n))]
    pi = np.where(d, 1.0, size / n)
    for k in range(rounds):
        res = select_round(
            e, d, pi, (budget - size) // rounds, rule="threshold", uniform=uniform, seed=seed * 31 + k
        )
        records.append(ReviewRound(~d, res.newly_selected, np.where(d, 0.0, res.review_prob)))
        d, pi = res.selected.copy(), res.review_prob
    return d, pi, records


def rounds_coverage(
    n: int, share: float, error_rate: float, critic: str, reps: int, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    out = {"hits": 0, "hits_last": 0, "width": 0.0, "width_last": 0.0, "left": 0.0, "bias": 0.0, "halve": 0.0}
    for r in range(reps):
        y, e = simulate_project(rng, n, error_rate, critic)
        d, pi, records = pilot_then_rounds(e, int(round(share * n)), 2, 0.05, seed=r)
        left = int((y & ~d).sum())
        both = residual_error_estimate_over_rounds(np.where(d, y, -1), d, e, records)
        last = residual_error_estimate(np.where(d, y, -1), d, pi, e)
        out["hits"] += both.lower <= left <= both.upper
        out["hits_last"] += last.lower <= left <= last.upper
        out["width"] += both.upper - both.lower
        out["width_last"] += last.upper - last.lower
        out["left"] += left
        out["bias"] += both.estimate - left
        out["halve"] += both.uniform_reviews_to_halve or 0
    return {k: v / reps for k, v in out.items()}


def rounds_part(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    header = (
        "| items | budget | machine error rate | critic | errors left (mean) | coverage (every round) "
        "| width (every round) | coverage (last round) | width (last round) | mean error of the estimate "
        "| uniform reviews to halve |"
    )
    lines = [header, "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    print(header)
    rows = []
    for n, share in ((600, 0.20), (2000, 0.10)):
        for critic in CRITICS:
            for rate in ERROR_RATES:
                r = rounds_coverage(n, share, rate, critic, args.reps, args.seed)
                line = (
                    f"| {n} | {share:.0%} | {rate:.0%} | {critic} | {r['left']:.0f} | {r['hits']:.3f} "
                    f"| {r['width']:.0f} | {r['hits_last']:.3f} | {r['width_last']:.0f} | {r['bias']:+.1f} "
                    f"| {r['halve']:.0f} |"
                )
                print(line, flush=True)
                lines.append(line)
                rows.append(r)
    elapsed = time.perf_counter() - started
    covs = [r["hits"] for r in rows]
    ratio = [r["width"] / r["width_last"] for r in rows if r["width_last"] > 0]
    summary = (
        f"Over every round the interval covers {min(covs):.3f}-{max(covs):.3f} (median {np.median(covs):.3f}) "
        f"at {min(ratio):.2f}-{max(ratio):.2f} times the width of the last round's alone (median {np.median(ratio):.2f})."
    )
    print(summary)
    print(f"{elapsed:.0f} s")
    if args.no_write:
        return
    cmd = "bench/bench_residual_coverage.py --part rounds"
    if args.reps != 500 or args.seed != 0:
        cmd += f" --reps {args.reps} --seed {args.seed}"
    body = f"""
Command: `.venv/bin/python {cmd}` ({dt.date.today().isoformat()}; {machine_line()}; {elapsed:.0f} s)

The design `actlabel run --budget auto --rounds 2` and the demo use: a uniform pilot of
max(30, 5%) items, then the rest of the budget in two threshold rounds with a 5% uniform share
(on 600 items at a 20% budget: 30 pilot items at p = 0.05, then 45 a round, of which about 2 are
the uniform share, drawn at p ~ 0.004 from ~520 items). {args.reps} simulated projects per row,
the same critics as above. "every round": `residual_error_estimate_over_rounds`, what
`actlabel status`, the report and the demo print since 2026-12-03 (each round's own estimate,
combined with weights from its design variance; docs/statistics.md section 5a); "last round":
`residual_error_estimate` on the final review_prob, what they printed before, where the pilot's
reviews count only as found errors. "mean error of the estimate": mean (estimate - true count),
every round.

{chr(10).join(lines)}

{summary}
"""
    write_section("Residual-error interval over rounds", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=("single", "rounds", "all"), default="all")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args()
    if args.part in ("rounds", "all"):
        rounds_part(args)
    if args.part == "rounds":
        return

    started = time.perf_counter()
    rows = []
    header = (
        "| design | machine error rate | critic | B/N | errors left (mean) "
        "| coverage (adjusted) | width (adjusted) | coverage (calibrated) | width (calibrated) "
        "| coverage (Wald) | width (Wald) | uniform reviews to halve |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print(header)
    for rule, uniform in DESIGNS:
        for critic in CRITICS:
            for rate in ERROR_RATES:
                r = coverage(rule, uniform, rate, critic, args.items, args.reps, args.seed)
                design = f"{rule} + uniform {uniform:.0%}" if uniform else f"{rule}, no uniform share"
                line = (
                    f"| {design} | {rate:.0%} | {critic} | {r['budget'] / args.items:.0%} | {r['mean_left']:.0f} "
                    f"| {r['cov_adjusted']:.3f} | {r['width_adjusted']:.0f} "
                    f"| {r['cov_calibrated']:.3f} | {r['width_calibrated']:.0f} "
                    f"| {r['cov_wald']:.3f} | {r['width_wald']:.0f} | {r['halve']:.0f} |"
                )
                print(line, flush=True)
                lines.append(line)
                rows.append(r)
    elapsed = time.perf_counter() - started
    covs = [r["cov_adjusted"] for r in rows]
    cals = [r["cov_calibrated"] for r in rows]
    walds = [r["cov_wald"] for r in rows]
    shrink = [r["width_calibrated"] / r["width_adjusted"] for r in rows if r["width_adjusted"] > 0]
    summary = (
        f"Adjusted interval coverage ranges {min(covs):.3f}-{max(covs):.3f} (median {np.median(covs):.3f}); "
        f"with the calibrated control variate {min(cals):.3f}-{max(cals):.3f} (median {np.median(cals):.3f}) "
        f"at {min(shrink):.2f}-{max(shrink):.2f} times the adjusted width; "
        f"the plain Wald interval {min(walds):.3f}-{max(walds):.3f} (median {np.median(walds):.3f})."
    )
    print(summary)
    print(f"{elapsed:.0f} s")
    if args.no_write:
        return
    cmd = "bench/bench_residual_coverage.py"
    if args.reps != 500 or args.items != 2000 or args.seed != 0:
        cmd += f" --reps {args.reps} --items {args.items} --seed {args.seed}"
    body = f"""
Command: `.venv/bin/python {cmd}` ({dt.date.today().isoformat()}; {machine_line()}; {elapsed:.0f} s)

Nominal 95% intervals for the number of wrong machine labels left among unreviewed items
(`actlabel.metrics.residual_error_estimate`), {args.reps} simulated projects of {args.items} items
per row. Budget B = 1.2 x error rate x N (near the expected number of errors, as the paper
advises). Critic "calibrated": P(error | e) = e; "pessimistic": good ranking, probabilities too
high on correct labels; "overconfident": reports half the calibrated probability (see the script). Coverage is the share of projects whose interval holds the
true count; with 500 projects its standard error is about 0.01 at 95%. Selection uses the
pivotal design (docs/statistics.md section 2). "adjusted" is the
default interval (variance guarded by pseudo-counts and by the calibrated-critic design variance,
docs/statistics.md section 5), "calibrated" the same with `calibrate=True` (cross-fitted Platt
recalibration of e as the control variate), "Wald" the plain normal interval with the
Horvitz-Thompson variance estimate. Widths are in items (mean upper - lower). "uniform reviews to
halve" is the mean of the advice `actlabel status` prints (`uniform_reviews_to_halve`).

{chr(10).join(lines)}

{summary} The Wald interval fails where few items are sampled from the unreviewed part
(small uniform share times small budget: threshold + 5% with a 6% budget samples about 6 of the
1,880 unreviewed items); there any valid interval is wide, and the adjusted one is (hundreds of
items: its half-width is about 1.96 times the estimator's true standard deviation). The
calibrated control variate narrows the interval where the critic overstates the error rate
(pessimistic rows) and costs a few points of coverage where it is already calibrated; a larger
uniform share buys the narrowest valid intervals.
"""
    write_section("Residual-error interval coverage", body)


if __name__ == "__main__":
    main()
