"""Stage 1 for multi-label tasks: the annotator scores every label, the machine label is the set.

Each label l gets a probability P(l applies) = p_l; the machine label is {l : p_l > 0.5} (the
empty set allowed), its confidence P(that set is exactly right) = prod_l max(p_l, 1 - p_l) with
the labels taken as independent, and every p_l is kept in the annotation's `probs` (label ->
p_l, not normalised: each is its own yes/no), which is what the per-label critic reads.

Annotators:
- an LLM (`local/...`, `openai/...`): one yes/no question per label after the item
  (prompting.label_question_messages), constrained to yes/no; p_l = P(yes) normalised over
  yes/no from the choice log-probabilities (llama.cpp scores both; endpoints give top
  alternatives). The item and the few-shot turns come first, so llama.cpp evaluates them once per
  item and only the short per-label question after. Without token probabilities an answer counts
  as 80% sure (the convention the composite annotator uses for a text answer without them).
- `features/minilm-l6-v2`: one-vs-rest logistic regression on MiniLM sentence embeddings of the
  few-shot examples (no model calls; fast on a CPU). A label that every example has, or none,
  gets the examples' rate of it (smoothed), not a fitted model.

Rate matching (on for embedded LLMs, `--label-model auto|on|off` as for single-label tasks): a
small LLM's P(yes) is compressed around its own level (the 0.5B model answered 0.3-0.45 for nearly
every word and label, so every set came out empty) while still ranking the items (per-label AUROC
up to 0.95). After the LLM pass, each label's log-odds are shifted so that the share of the pool
whose label is decided yes equals that label's rate among the few-shot examples (smoothed,
(k + 0.5) / (n + 1)): logit p'_il = logit p_il - logit t_l with t_l the (1 - rate_l) quantile of
the pool's p_l. Ranks are kept; the LLM's own p_l stays in the record's raw JSON (`p_yes`), the
shifted ones are the record's probabilities. It needs MIN_RATE_EXAMPLES examples with text.
Measured in docs/benchmarks.md ("Multi-label"): on the feature annotator it lowered exact-set
match, so that one keeps its own probabilities.

Resume as for single-label annotation: an item whose latest annotation is ok and was made with
the same settings is skipped; every LLM call goes through the response cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from actlabel import multilabel, prompting
from actlabel.errors import UserError
from actlabel.logistic import logit, sigmoid
from actlabel.models.base import ChatRequest, ChatResponse, ModelError
from actlabel.models.retry import ParseFailure, call_with_parse
from actlabel.stages import failed_record, gold_accuracy, pending_items, settings_key, stage_run
from actlabel.store import Item, Store

YES_NO = ("yes", "no")
#: P(yes) given to a bare yes (1 - this to a bare no) when the backend gives no token probabilities
UNSCORED_ANSWER_PROB = 0.8
FEATURE_ANNOTATOR_SPEC = "features/minilm-l6-v2"
#: inverse L2 strength of the one-vs-rest probes (few examples: strong regularisation)
PROBE_C = 1.0
MIN_RATE_EXAMPLES = 5
#: bump when rate matching changes, so `annotate` redoes the pass (its LLM calls are cached)
RATE_MATCH_VERSION = 1


def decide(p_yes: np.ndarray) -> np.ndarray:
    return np.asarray(p_yes) > 0.5  # strict: a pool value tied with a rate-matching threshold is a no


def set_record(
    item_rowid: int, run_id: int, model: str, names: Sequence[str], p_yes: np.ndarray, raw: str = ""
) -> dict[str, Any]:
    """An ok annotation of a multi-label item from its per-label probabilities."""
    p = np.clip(np.asarray(p_yes, dtype=float), 0.0, 1.0)
    chosen = decide(p)
    probs = {n: round(float(v), 6) for n, v in zip(names, p, strict=True)}
    return {
        "item_rowid": item_rowid,
        "run_id": run_id,
        "model": model,
        "label": multilabel.encode((n for n, c in zip(names, chosen, strict=True) if c), names),
        "confidence": float(multilabel.set_probability(p, chosen)),
        "raw": raw or json.dumps({"p_yes": probs}),
        "probs": json.dumps(probs),
        "status": "ok",
    }


def label_probs(store: Store, rowids: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """item_rowid -> the current annotation's p_l per label (task order), for ok annotations with them."""
    names = store.task.label_names
    out = {}
    for rowid, (status, probs) in store.latest("annotations", ("status", "probs")).items():
        if status == "ok" and probs and (rowids is None or rowid in rowids):
            p = json.loads(probs)
            out[rowid] = np.array([float(p.get(n, 0.0)) for n in names])
    return out


# ---- the LLM annotator ---------------------------------------------------------------------------


def parse_yes_no(response: ChatResponse) -> float:
    """P(yes) from one yes/no answer."""
    answer = prompting.normalize(response.text).split(" ")[0] if response.text.strip() else ""
    if answer not in YES_NO:
        raise ValueError(f"expected yes or no, got {response.text[:40]!r}")
    if response.choice_logprobs:
        return prompting.normalized_probs(response.choice_logprobs, YES_NO)["yes"]
    return UNSCORED_ANSWER_PROB if answer == "yes" else 1.0 - UNSCORED_ANSWER_PROB


class LabelSetAnnotator:
    """Asks a chat model one yes/no question per label (see the module docstring)."""

    def __init__(self, store: Store, stack: Any, *, max_parse_retries: int = 2):
        self.store = store
        self.task = store.task
        self.stack = stack
        self.max_parse_retries = max_parse_retries
        self.with_images = stack.raw.supports_images
        self.logprobs = stack.raw.supports_logprobs

    async def score(self, item: Item) -> np.ndarray | ParseFailure:
        p = []
        lp = {"logprobs": True, "top_logprobs": 20} if self.logprobs else {}
        for name in self.task.label_names:
            messages = prompting.label_question_messages(
                self.task, item, name, root=self.store.root, with_images=self.with_images
            )
            request = ChatRequest(messages, max_tokens=4, choices=YES_NO, **lp)
            outcome = await call_with_parse(self.stack.backend, request, parse_yes_no, self.max_parse_retries)
            if isinstance(outcome, ParseFailure):
                return outcome
            p.append(outcome.value)
        return np.array(p)


def example_rates(store: Store) -> np.ndarray | None:
    """Each label's smoothed rate among the few-shot examples with text, or None with too few."""
    task = store.task
    sets = [ex.label_set() for ex in task.examples if ex.text.strip()]
    if len(sets) < MIN_RATE_EXAMPLES:
        return None
    y = multilabel.indicators([multilabel.encode(s, task.label_names) for s in sets], task.label_names)
    return (y.sum(axis=0) + 0.5) / (len(sets) + 1.0)


def rate_matched(p_yes: np.ndarray, rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shifted probabilities, per-label thresholds t_l): see the module docstring."""
    p = np.clip(np.asarray(p_yes, dtype=float), 1e-6, 1 - 1e-6)
    t = np.clip(np.array([np.quantile(p[:, j], 1.0 - rates[j]) for j in range(p.shape[1])]), 1e-6, 1 - 1e-6)
    return sigmoid(logit(p, 1e-6) - logit(t, 1e-6)), t


def finish_rate_matching(store: Store, model: str, settings: str, run_id: int) -> str | None:
    """Rewrite every current annotation made with `settings` from its LLM p_yes, shifted (a run of
    its own, the latest record wins). Returns the run's one-line description, or None."""
    rates = example_rates(store)
    if rates is None:
        return None
    names = store.task.label_names
    done = {
        run["run_id"]
        for run in store.runs("annotate")
        if json.loads(run["params"]).get("settings") == settings
    }
    raw_p: dict[int, np.ndarray] = {}
    for rowid, (status, run, raw) in store.latest("annotations", ("status", "run_id", "raw")).items():
        if status == "ok" and run in done:
            doc = json.loads(raw or "{}").get("p_yes")
            if doc:
                raw_p[rowid] = np.array([float(doc[n]) for n in names])
    if len(raw_p) < 2:
        return None
    rowids = sorted(raw_p)
    p = np.array([raw_p[r] for r in rowids])
    q, t = rate_matched(p, rates)
    how = "rate-matched to the few-shot examples: " + ", ".join(
        f"{n} {r:.2f} (t {v:.2f})" for n, r, v in zip(names, rates, t, strict=True)
    )
    pass_id = store.start_run("annotate", {"model": model, "settings": settings, "pass_of": run_id,
                                           "multi_label": True, "rate_matching": how})  # fmt: skip
    records = []
    for i, r in enumerate(rowids):
        raw = json.dumps({"p_yes": {n: round(float(v), 6) for n, v in zip(names, p[i], strict=True)},
                          "thresholds": {n: round(float(v), 6) for n, v in zip(names, t, strict=True)}})  # fmt: skip
        records.append(set_record(r, pass_id, model, names, q[i], raw=raw))
    store.add_annotations(records)
    store.finish_run(pass_id, "done", how[:500])
    return how


async def annotate_sets_llm(store: Store, stack: Any, *, concurrency: int, cap: Any, limit: int | None,
                            progress: bool, max_parse_retries: int, result: Any,
                            rate_matching: bool = False) -> Any:  # fmt: skip
    """The LLM pass over pending items; fills and returns `result` (an AnnotateResult)."""
    from actlabel.engine import run_items

    templates = prompting.templates_hash(prompting.MULTILABEL_TEMPLATES)
    settings = settings_key(stack.spec, False, templates) + "+sets"
    if rate_matching:
        settings += f"+rates{RATE_MATCH_VERSION}"
    todo, skipped = pending_items(store, settings, limit)
    left_after_limit = max(0, len(todo) - limit) if limit is not None else 0
    if limit is not None:
        todo = todo[:limit]
    result.skipped = skipped
    if not todo:
        result.accuracy, result.gold_items = gold_accuracy(store)
        return result
    annotator = LabelSetAnnotator(store, stack, max_parse_retries=max_parse_retries)
    params = {"model": stack.spec, "cot": False, "templates": templates, "settings": settings,
              "limit": limit, "multi_label": True}  # fmt: skip
    names = store.task.label_names
    with stage_run(store, "annotate", params, usage=stack.usage) as run:
        run_id = run.id

        async def work(item: Item) -> dict[str, Any]:
            outcome = await annotator.score(item)
            if isinstance(outcome, ParseFailure):
                return failed_record(item, run_id, stack.spec, outcome)
            return set_record(item.rowid, run_id, stack.spec, names, outcome)

        def on_error(item: Item, exc: ModelError) -> dict[str, Any]:
            return failed_record(item, run_id, stack.spec, exc)

        engine = await run_items(
            store.iter_items(todo), work, concurrency=concurrency, write_batch=store.add_annotations,
            usage=stack.usage, cap=cap, progress=progress, label="annotate", on_error=on_error,
        )  # fmt: skip
        run.ended_by(engine)
    counts = store.run_status_counts("annotations", run_id)
    if rate_matching and counts.get("ok"):
        finish_rate_matching(store, stack.spec, settings, run_id)
    result.done, result.failed = counts.get("ok", 0), counts.get("failed", 0)
    result.left = len(todo) - result.done - result.failed + left_after_limit
    result.take_usage(stack.usage, engine, run_id)
    result.errors = [f"item {k.item_id}: {e}" for k, e in engine.errors]
    result.accuracy, result.gold_items = gold_accuracy(store)
    return result


# ---- the feature annotator -----------------------------------------------------------------------


class OneVsRestProbe:
    """Per-label logistic regression on L2-normalised features; scikit-learn style."""

    def __init__(self, n_labels: int, C: float = PROBE_C, seed: int = 0):
        self.n_labels = n_labels
        self.C = C
        self.seed = seed

    def fit(self, features: np.ndarray, y: np.ndarray) -> OneVsRestProbe:
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y, dtype=int)
        self.models_: list[Any] = []
        # a label every example has, or none has: its smoothed rate among the examples
        self.rates_ = (y.sum(axis=0) + 0.5) / (y.shape[0] + 1.0)
        for j in range(self.n_labels):
            if 0 < y[:, j].sum() < y.shape[0]:
                model = LogisticRegression(
                    C=self.C, max_iter=2000, class_weight="balanced", random_state=self.seed
                )
                self.models_.append(model.fit(features, y[:, j]))
            else:
                self.models_.append(None)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        out = np.empty((len(features), self.n_labels))
        for j, model in enumerate(self.models_):
            out[:, j] = self.rates_[j] if model is None else model.predict_proba(features)[:, 1]
        return out


def fit_example_probe(store: Store) -> tuple[OneVsRestProbe, int]:
    """The one-vs-rest probe on the few-shot examples' MiniLM features."""
    from actlabel.models.features import cached_text_features

    task = store.task
    examples = [ex for ex in task.examples if ex.text.strip()]
    if len(examples) < 2:
        raise UserError(
            f"{FEATURE_ANNOTATOR_SPEC} learns from the few-shot examples and this task has {len(examples)} "
            "with text: give some with `actlabel init ... --examples FILE` (label column `a|b`)"
        )
    y = multilabel.indicators([multilabel.encode(ex.label_set(), task.label_names) for ex in examples],
                              task.label_names)  # fmt: skip
    x = cached_text_features([ex.text for ex in examples], store.root)
    return OneVsRestProbe(len(task.label_names)).fit(x, y), len(examples)


def annotate_sets_features(store: Store, *, limit: int | None, progress: bool, result: Any) -> Any:
    from actlabel.models.features import cached_text_features

    start = time.monotonic()
    task = store.task
    probe, n_examples = fit_example_probe(store)
    model_name = f"{FEATURE_ANNOTATOR_SPEC}+one-vs-rest({n_examples} examples)"
    # the probe is the examples: other examples, other annotator
    examples_hash = hashlib.sha256(
        json.dumps([[e.text, e.label] for e in task.examples]).encode()
    ).hexdigest()
    settings = settings_key(model_name, False, examples_hash[:16]) + "+sets"
    todo, skipped = pending_items(store, settings, limit)
    left_after_limit = max(0, len(todo) - limit) if limit is not None else 0
    if limit is not None:
        todo = todo[:limit]
    result.model, result.mode, result.skipped, result.left = (
        model_name,
        "few-shot features",
        skipped,
        left_after_limit,
    )
    if not todo:
        result.accuracy, result.gold_items = gold_accuracy(store)
        return result
    params = {"model": model_name, "cot": False, "settings": settings, "limit": limit, "multi_label": True}
    names = task.label_names
    with stage_run(store, "annotate", params) as run:
        run_id = run.id
        for s in range(0, len(todo), 512):
            items = list(store.iter_items(todo[s : s + 512]))
            texts = ["\n".join(v for _c, v in prompting.item_text_fields(task, it)) for it in items]
            p = probe.predict_proba(cached_text_features(texts, store.root))
            store.add_annotations(
                [set_record(it.rowid, run_id, model_name, names, p[i]) for i, it in enumerate(items)]
            )
            result.done += len(items)
    result.run_id, result.elapsed = run_id, time.monotonic() - start
    result.accuracy, result.gold_items = gold_accuracy(store)
    return result
