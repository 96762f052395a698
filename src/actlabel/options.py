"""The options of the two model-calling stages, each one frozen object validated once.

The CLI builds them from its flags and `Project` from keyword arguments, and the stage reads them:
an option is declared, checked and named in one place instead of threaded by hand through three
signatures. A mistake is a one-line UserError naming the option as the command line spells it.

Token budgets have one name per meaning: `reasoning_tokens` bounds one reasoning step (a call's
own max_tokens when the model thinks aloud), `max_run_tokens` stops a whole run (`--max-tokens`
on the command line, kept for compatibility); `max_tokens` is only ever a single request's limit.
What needs the resolved model (whether it has a batch API) is checked by the stage, which knows it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from actlabel.errors import UserError

#: --engine: this process, or a pool of Ray actors (distributed.py)
ENGINES = ("async", "ray")
#: --label-model
LABEL_MODEL_SETTINGS = ("auto", "on", "off")
#: the reasoning budget of a chain-of-thought annotation (--cot)
COT_REASONING_TOKENS = 256
#: the reasoning budget of a critic that reasons (cot, devil, cot-logit, cot-ppl)
CRITIC_REASONING_TOKENS = 256
#: --concurrency's range (the CLI's click.IntRange says the same)
MAX_CONCURRENCY = 1024


@dataclass(frozen=True)
class StageOptions:
    """What annotate and critique share: which model, how many calls at once, when to stop, where
    the calls run. backend: a ready Backend instead of loading `model` (tests, benchmarks)."""

    model: str | None = None
    base_url: str | None = None
    backend: Any = None
    #: the backend constructor's options (n_ctx=, n_threads= for local models)
    backend_options: dict[str, Any] | None = None
    concurrency: int | None = None
    max_cost: float | None = None
    max_run_tokens: int | None = None
    limit: int | None = None
    progress: bool = True
    max_parse_retries: int = 2
    batch: bool = False
    wait: bool = False
    engine: str = "async"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UserError(f"--concurrency must be from 1 to {MAX_CONCURRENCY}, not {self.concurrency}")
        if self.max_cost is not None and self.max_cost <= 0:
            raise UserError("--max-cost must be > 0")
        if self.max_run_tokens is not None and self.max_run_tokens <= 0:
            raise UserError("--max-tokens must be > 0")
        if self.max_parse_retries < 0:
            raise UserError(f"max_parse_retries must be 0 or more, not {self.max_parse_retries}")
        if self.engine not in ENGINES:
            raise UserError(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.workers is not None and self.engine == "async":
            raise UserError("--workers goes with --engine ray")
        if self.workers is not None and self.workers < 1:
            raise UserError("--workers must be at least 1")
        if self.wait and not self.batch:
            raise UserError("--wait goes with --batch")
        if self.batch and self.engine != "async":
            raise UserError("--batch runs on the provider's batch API; drop --engine ray")

    def cap(self) -> Any:
        """The run's RunCap (usage.py), or None when neither --max-cost nor --max-tokens is set."""
        from actlabel.models.usage import RunCap

        if self.max_cost is None and self.max_run_tokens is None:
            return None
        return RunCap(max_run_tokens=self.max_run_tokens, max_cost=self.max_cost)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Any:
        """The options from keyword arguments (Project's methods), an unknown one named in one line."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UserError(
                f"unknown {cls.__name__} option {unknown[0]!r} (known: {', '.join(sorted(names))})"
            )
        return cls(**kwargs)


@dataclass(frozen=True)
class AnnotateOptions(StageOptions):
    cot: bool = False
    reasoning_tokens: int = COT_REASONING_TOKENS
    label_model: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reasoning_tokens < 1:
            raise UserError(f"--reasoning-tokens must be at least 1, not {self.reasoning_tokens}")
        if self.label_model not in LABEL_MODEL_SETTINGS:
            raise UserError(
                f"--label-model must be one of {', '.join(LABEL_MODEL_SETTINGS)}, not {self.label_model!r}"
            )


@dataclass(frozen=True)
class CritiqueOptions(StageOptions):
    #: None: the default for this project (critique.default_strategy)
    strategy: str | None = None
    reasoning_tokens: int = CRITIC_REASONING_TOKENS
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reasoning_tokens < 1:
            raise UserError(f"--reasoning-tokens must be at least 1, not {self.reasoning_tokens}")


@dataclass(frozen=True)
class RunOptions(StageOptions):
    """`actlabel run`: the annotator's options (the StageOptions fields), the critic's, and the
    review plan. Everything is checked here, before an hour of annotation, not when the round
    is drawn."""

    cot: bool = False
    critic_model: str | None = None
    #: None: the pipeline's default for this project (pipeline.default_strategy)
    strategy: str | None = None
    budget: str = "auto"
    #: None: the plan kept in the project, else pipeline.DEFAULT_ROUNDS
    rounds: int | None = None
    max_budget: str | None = None
    rule: str = "threshold"
    uniform: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        from actlabel import select as rules  # NumPy: not at the CLI's import

        if self.batch:
            raise UserError("actlabel run does not use --batch: run `actlabel annotate --batch`, then run")
        if self.rule not in rules.RULES:
            raise UserError(f"--rule must be one of {', '.join(rules.RULES)}, not {self.rule!r}")
        if not 0 <= self.uniform < 1:
            raise UserError(f"--uniform must be in [0, 1), not {self.uniform}")
        if self.rounds is not None and self.rounds < 1:
            raise UserError(f"--rounds must be at least 1, not {self.rounds}")
        for flag, spec in (("--budget", self.budget), ("--max-budget", self.max_budget)):
            if spec is None or (flag == "--budget" and rules.is_auto_budget(spec)):
                continue
            try:
                rules.parse_budget(spec)
            except ValueError as exc:
                raise UserError(f"{flag}: {exc}") from None

    def _stage_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(StageOptions)}

    def annotate_options(self) -> AnnotateOptions:
        return AnnotateOptions(**self._stage_fields(), cot=self.cot)

    def critique_options(self, strategy: str | None) -> CritiqueOptions:
        """The critic's: its own model (None: critique's default), the same limits and engine."""
        from actlabel.models.spec import ModelSpec

        shared = self._stage_fields() | {"model": self.critic_model, "backend": None}
        if self.critic_model and not ModelSpec.parse(self.critic_model).can("embedded"):
            shared["backend_options"] = None  # --n-ctx / --threads are the local annotator's
        return CritiqueOptions(**shared, strategy=strategy)


def stage_options(cls: type[StageOptions], options: StageOptions | None, kwargs: dict[str, Any]) -> Any:
    """`options` as given, or built from the keyword arguments; both at once is a caller's bug."""
    if options is None:
        return cls.from_kwargs(kwargs)
    if not isinstance(options, cls):
        raise TypeError(f"expected {cls.__name__}, got {type(options).__name__}")
    if kwargs:
        raise TypeError(f"pass {cls.__name__} or keyword options, not both ({', '.join(sorted(kwargs))})")
    return options
