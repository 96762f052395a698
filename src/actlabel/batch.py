"""Batch mode: fill the response cache through the provider's batch API, then run the normal path.

`actlabel annotate DIR --batch` (and `critique`) runs the stage with `BatchRecorder` in front of
the model. A request whose answer is in the cache goes on as usual; one that misses is written to
a batch requests file instead of being sent (its `custom_id` is the cache key, its body exactly
what the online client would POST), and the item records nothing: it stays pending. The file is
uploaded, the batch created, and the job kept in the store (`batch_jobs`, `batch_requests`), so
any later process finds it.

Running the same command again retrieves the job; once the provider has finished (or with `--wait`
after polling), every answered line goes through the online client's own response parsing
(`openai_compat.parse_completion`) into the cache, under its key, in one transaction with the
job's status and a usage row for the run table. The stage then runs again: those requests now hit
the cache and the records are written by the stage's normal parsing, exactly as online. Requests a
strategy makes only after seeing a first answer (a CoT continuation, cot-logit's verdict, a re-ask
of an unparseable answer) miss the cache on that run and go into the next batch: one round each.

Requests the provider failed (error file lines, lines missing from an expired or cancelled batch)
are sent online by the next run, so one bad line never waits another day. A batch that failed as a
whole (validation) is reported and its requests go into a new batch on the next `--batch` run.

Nothing is paid twice: a key is submitted only when it misses the cache and no unfinished job of
the same stage and model exists (the stage is not run at all while one is in progress), and
a job is written to the store before the provider is asked to create it, so a process killed at
any point finds the job again (a job caught between the two is matched to the provider's batch by
its input file).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar

from actlabel.errors import UserError
from actlabel.models.base import ChatRequest, ChatResponse, ModelError, RetryableError
from actlabel.models.retry import RetryPolicy, call_with_retry
from actlabel.models.spec import FEATURES, ModelSpec
from actlabel.store import Store

if TYPE_CHECKING:
    import httpx

    from actlabel.models.openai_compat import OpenAICompatBackend
    from actlabel.options import StageOptions
    from actlabel.stages import ModelStack

R = TypeVar("R")

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
#: OpenAI's limits per batch are 50,000 requests and a 200 MB input file; we stay a little under
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 190_000_000
#: batch calls cost half the online price at OpenAI (and most providers that copy its batch API)
BATCH_PRICE_FACTOR = 0.5
#: provider statuses after which a batch changes no more
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: our own statuses: written before the provider knows the batch / after its results are stored
CREATING, COLLECTED, ABANDONED = "creating", "collected", "abandoned"
#: --wait stops resubmitting after this many rounds (each strategy needs at most a few)
MAX_ROUNDS = 8
#: --wait polls after this many seconds, then 1.5x longer each time up to the maximum: batches
#: take minutes to hours, and retrieving is free but rate limited
POLL_INTERVAL = 5.0
MAX_POLL_INTERVAL = 60.0


class MaybeCreated(ModelError):
    """Creating a batch failed after the request may have reached the provider."""


class Deferred(ModelError):
    """The request went into a batch instead of being sent: the stage records nothing for its item.

    A ModelError so the engine counts the item as not done and goes on; the stages' error hooks
    return no record for it (a failed record would make the item look finished)."""


# ---- the provider's batch API -------------------------------------------------------------------


class BatchClient:
    """Files and batches endpoints of an OpenAI-compatible provider, next to its chat endpoint.

    Uses the backend's endpoint and headers (the API key comes from the same environment variable,
    never stored). Transient failures are retried, except creating a batch after the request may
    have reached the server (a timeout): a second create would pay for the work twice.
    """

    def __init__(
        self, backend: OpenAICompatBackend, *, timeout: float = 300.0, policy: RetryPolicy | None = None
    ):
        self.base_url = backend.base_url
        self.spec = backend.spec
        # The backend's own headers (auth, organisation, project) minus the JSON content type,
        # which a multipart upload must not carry.
        headers = {k: v for k, v in backend._headers.items() if k.lower() != "content-type"}
        import httpx  # only batch runs need it: an online annotate does not pay for its import

        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
        self.policy = policy or RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=30.0)

    async def _send(self, method: str, path: str, *, idempotent: bool = True, **kw: Any) -> httpx.Response:
        import httpx

        from actlabel.models.openai_compat import http_error, one_line

        async def once() -> httpx.Response:
            for upload in (kw.get("files") or {}).values():
                upload[1].seek(0)  # a retried upload sends the file from its start again
            try:
                resp = await self._http.request(method, f"{self.base_url}{path}", **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the server: always safe to ask again.
                raise RetryableError(f"{self.spec}: connection failed: {one_line(str(exc))}") from None
            except httpx.TransportError as exc:
                if not idempotent:
                    raise MaybeCreated(
                        f"{self.spec}: {method} {path} failed midway ({type(exc).__name__}); it may have "
                        "been created: run the same command again, the job is matched by its input file"
                    ) from None
                raise RetryableError(f"{self.spec}: {method} {path} failed: {type(exc).__name__}") from None
            if resp.status_code >= 400:  # 429/5xx are retryable: the server answered, so it did not act
                raise http_error(self.spec, resp)
            return resp

        return await call_with_retry(once, policy=self.policy, rng=_RNG)

    async def upload(self, fh: IO[bytes], filename: str) -> str:
        resp = await self._send(
            "POST",
            "/files",
            files={"file": (filename, fh, "application/jsonl")},
            data={"purpose": "batch"},
        )
        return str(resp.json()["id"])

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        resp = await self._send(
            "POST",
            "/batches",
            idempotent=False,
            json={
                "input_file_id": input_file_id,
                "endpoint": ENDPOINT,
                "completion_window": COMPLETION_WINDOW,
                "metadata": metadata,
            },
        )
        return resp.json()

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return (await self._send("GET", f"/batches/{batch_id}")).json()

    async def find_by_input_file(self, input_file_id: str) -> dict[str, Any] | None:
        """The provider's batch made from `input_file_id`, among the most recent ones, if any."""
        try:
            data = (await self._send("GET", "/batches", params={"limit": 100})).json().get("data", [])
        except ModelError:
            return None  # a provider without the list endpoint: the job is resubmitted
        return next((b for b in data if b.get("input_file_id") == input_file_id), None)

    async def content(self, file_id: str) -> bytes:
        return (await self._send("GET", f"/files/{file_id}/content")).content

    async def aclose(self) -> None:
        await self._http.aclose()


_RNG = random.Random()


def check_scale_options(spec: str, *, batch: bool, engine: str) -> None:
    """Reject --batch / --engine for a model that cannot take them, before it is loaded (the
    combinations that fail whatever the model are refused by options.StageOptions)."""
    parsed = ModelSpec.parse(spec)
    if batch and not parsed.can("batch_api"):
        raise UserError(f"batch mode needs an openai/ model with a batch API, not {parsed.bare}")
    if engine != "async" and parsed.kind == FEATURES:
        raise UserError(f"--engine {engine} distributes chat model calls, and {spec} makes none")


def batch_backend(stack: ModelStack) -> OpenAICompatBackend:
    """The stage's backend if it can batch; else the one-line reason as a UserError."""
    from actlabel.models.openai_compat import OpenAICompatBackend

    raw = stack.raw
    if getattr(raw, "engine", None) == "ray":
        raise UserError("--batch runs on the provider's batch API; drop --engine ray")
    if not isinstance(raw, OpenAICompatBackend):
        raise UserError(
            f"batch mode needs an openai/ model with a batch API, not {ModelSpec.parse(stack.spec).bare}"
        )
    return raw


# ---- recording requests into batch files ------------------------------------------------------------


@dataclass
class _Chunk:
    """One requests file being written (one provider batch)."""

    fh: IO[bytes]
    keys: list[tuple[str, str | None]] = field(default_factory=list)  # (cache key, choices JSON)
    size: int = 0


class BatchRecorder:
    """Stands in for `stack.backend` during a batch run: cache hits and keys to be retried online go
    to the metered backend; every other request is appended to a requests file and Deferred.

    It sits outside the meter so a deferral is neither a call nor a failure in the run's usage.
    """

    def __init__(self, stack: ModelStack, backend: OpenAICompatBackend, online_keys: set[str]) -> None:
        self.stack = stack
        self.inner = stack.backend
        self.raw = backend
        self.online_keys = online_keys
        self.spec = self.inner.spec
        self.supports_logprobs = self.inner.supports_logprobs
        self.supports_images = self.inner.supports_images
        self.chunks: list[_Chunk] = []
        self.seen: set[str] = set()
        self.online = 0

    async def chat(self, request: ChatRequest) -> ChatResponse:
        key = self.stack.cached.key(request)
        if self.stack.cached.cache.get(key) is not None:
            return await self.inner.chat(request)
        if key in self.online_keys:
            self.online += 1  # the batch failed it: ask online now rather than wait another day
            return await self.inner.chat(request)
        if key not in self.seen:
            self.seen.add(key)
            # Exactly the body the online client would POST (same builder, same extra_body).
            body = await self.raw._payload(request)
            line = json.dumps(
                {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body},
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode("utf-8")
            self._append(key, request, line + b"\n")
        raise Deferred(f"{self.spec}: deferred to a provider batch")

    def _append(self, key: str, request: ChatRequest, line: bytes) -> None:
        chunk = self.chunks[-1] if self.chunks else None
        if chunk is None or len(chunk.keys) >= MAX_BATCH_REQUESTS or chunk.size + len(line) > MAX_BATCH_BYTES:
            chunk = _Chunk(tempfile.TemporaryFile())  # noqa: SIM115 - closed in close()
            self.chunks.append(chunk)
        chunk.fh.write(line)
        chunk.size += len(line)
        # What parsing the answer later needs besides the body: the constrained choices, from which
        # the client derives choice log-probabilities.
        chunk.keys.append((key, None if request.choices is None else json.dumps(list(request.choices))))

    @property
    def requests(self) -> int:
        return sum(len(c.keys) for c in self.chunks)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def close(self) -> None:
        for c in self.chunks:
            c.fh.close()


# ---- jobs in the store ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    job_id: int
    stage: str
    spec: str
    provider_batch_id: str
    input_file_id: str
    status: str
    request_count: int


def open_jobs(store: Store, stage: str, spec: str) -> list[Job]:
    """Jobs of this stage and model whose results are not in the store yet."""
    return [Job(*row) for row in store.batch_jobs(stage, spec, exclude=(COLLECTED, ABANDONED, "failed"))]


def online_keys(store: Store, spec: str) -> set[str]:
    """Keys a collected batch failed: the next run sends them online instead of batching again."""
    return store.failed_batch_keys(spec)


# ---- submit, poll, collect ------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    provider_batch_id: str
    requests: int


async def submit(
    store: Store, client: BatchClient, recorder: BatchRecorder, stage: str, spec: str
) -> list[Submitted]:
    """Upload each requests file and create its batch; the job is stored before it is created."""
    out = []
    for i, chunk in enumerate(recorder.chunks):
        chunk.fh.flush()
        file_id = await client.upload(chunk.fh, f"actlabel-{stage}-{int(time.time())}-{i}.jsonl")
        job_id = store.add_batch_job(stage, spec, file_id, CREATING, chunk.keys, {"endpoint": ENDPOINT})
        try:
            batch = await client.create(file_id, {"actlabel_stage": stage, "actlabel_job": str(job_id)})
        except MaybeCreated:
            raise  # the job stays 'creating': the next run looks for its batch by input file
        except ModelError as exc:
            # The provider answered no (e.g. no batch API): nothing was created or paid.
            store.set_batch_job_status(job_id, ABANDONED)
            raise UserError(f"the provider refused the batch: {exc}") from None
        store.set_batch_job_status(job_id, str(batch.get("status") or "validating"), str(batch["id"]))
        out.append(Submitted(str(batch["id"]), len(chunk.keys)))
    return out


@dataclass
class Collected:
    provider_batch_id: str
    status: str
    answered: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    error: str = ""


async def _adopt(store: Store, client: BatchClient, job: Job) -> Job:
    """A job stored but maybe never created (the process died in between): find its batch."""
    found = await client.find_by_input_file(job.input_file_id)
    if found is None:
        store.set_batch_job_status(job.job_id, ABANDONED)
        return Job(job.job_id, job.stage, job.spec, "", job.input_file_id, ABANDONED, job.request_count)
    store.set_batch_job_status(job.job_id, str(found.get("status")), str(found["id"]))
    return Job(
        job.job_id,
        job.stage,
        job.spec,
        str(found["id"]),
        job.input_file_id,
        str(found["status"]),
        job.request_count,
    )


def _jsonl(raw: bytes) -> list[dict[str, Any]]:
    rows = []
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a damaged line: its request counts as failed (no answer found)
    return rows


async def collect(store: Store, client: BatchClient, job: Job, batch: dict[str, Any]) -> Collected:
    """Store a finished batch's answers in the cache, in one transaction with the job's status."""
    from actlabel.models.openai_compat import one_line, parse_completion
    from actlabel.models.usage import PriceTable

    status = str(batch.get("status"))
    report = Collected(job.provider_batch_id, status)
    submitted = store.batch_request_choices(job.job_id)
    answers: dict[str, ChatResponse] = {}
    errors: dict[str, str] = {}
    if status == "failed":
        # The whole batch was refused (validation): nothing ran, nothing is paid; the requests
        # stay out of the cache and go into a new batch on the next --batch run.
        detail = "; ".join(
            str(e.get("message"))
            for e in ((batch.get("errors") or {}).get("data") or [])
            if isinstance(e, dict)
        )
        store.set_batch_job_status(job.job_id, "failed", params={"endpoint": ENDPOINT, "errors": detail})
        report.failed, report.error = len(submitted), one_line(detail, 200)
        return report
    for file_field in ("output_file_id", "error_file_id"):
        file_id = batch.get(file_field)
        if not file_id:
            continue
        for row in _jsonl(await client.content(str(file_id))):
            key = row.get("custom_id")
            if key not in submitted:
                continue
            response = row.get("response") or {}
            if row.get("error") or response.get("status_code") != 200:
                err = row.get("error") or (response.get("body") or {}).get("error") or {}
                errors[key] = one_line(str(err.get("message") if isinstance(err, dict) else err) or "failed")
                continue
            choices = submitted[key]
            # The same parsing as an online answer; only `choices` of the request matters to it.
            request = ChatRequest((), choices=None if choices is None else tuple(json.loads(choices)))
            try:
                answers[key] = parse_completion(response.get("body"), request, client.spec)
            except ModelError as exc:
                errors[key] = one_line(str(exc))
    for key in submitted:
        if key not in answers and key not in errors:
            errors[key] = f"no answer in the {status} batch"
    prices = PriceTable.load(store.root)
    cache = store.response_cache()
    for response in answers.values():
        report.input_tokens += response.usage.input_tokens
        report.output_tokens += response.usage.output_tokens
        cost = prices.cost(client.spec, response.usage.input_tokens, response.usage.output_tokens)
        report.cost += (cost or 0.0) * BATCH_PRICE_FACTOR
    report.answered, report.failed = len(answers), len(errors)
    with store.transaction():
        for key, response in answers.items():
            cache.put(
                key,
                client.spec,
                response.to_json(),
                response.usage.input_tokens,
                response.usage.output_tokens,
            )
        store.record_batch_answers(job.job_id, answers, errors)
        store.set_batch_job_status(job.job_id, COLLECTED)
        # The batch's calls in the runs table, so status/report count them like online calls
        # (the stage that reads them back sees cache hits).
        run_id = store.start_run(
            f"{job.stage} batch",
            {"model": job.spec, "batch": job.provider_batch_id, "provider_status": status},
        )
        store.finish_run(
            run_id,
            "done",
            None,
            calls=report.answered,
            failures=report.failed,
            input_tokens=report.input_tokens,
            output_tokens=report.output_tokens,
            cost=round(report.cost, 6),
        )
    return report


@dataclass(frozen=True)
class Waiting:
    provider_batch_id: str
    status: str
    done: int
    total: int


async def poll(
    store: Store,
    client: BatchClient,
    jobs: list[Job],
    *,
    wait: bool,
    poll_interval: float,
    max_poll_interval: float,
    progress: bool,
) -> tuple[list[Collected], list[Waiting]]:
    """Collect every finished job; with `wait`, poll the others (backing off) until they finish."""
    collected: list[Collected] = []
    interval = poll_interval
    pending = list(jobs)
    while True:
        waiting: list[Waiting] = []
        still: list[Job] = []
        for job in pending:
            if job.status == CREATING:
                job = await _adopt(store, client, job)
                if job.status == ABANDONED:
                    continue  # never created: its requests are batched again by this run
            batch = await client.retrieve(job.provider_batch_id)
            status = str(batch.get("status"))
            if status in TERMINAL:
                collected.append(await collect(store, client, job, batch))
                continue
            if status != job.status:
                store.set_batch_job_status(job.job_id, status)
            counts = batch.get("request_counts") or {}
            done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
            waiting.append(
                Waiting(job.provider_batch_id, status, done, int(counts.get("total") or job.request_count))
            )
            still.append(job)
        if not waiting or not wait:
            return collected, waiting
        if progress:
            line = ", ".join(f"{w.provider_batch_id} {w.status} {w.done}/{w.total}" for w in waiting)
            print(f"batch: waiting for {line}", file=sys.stderr, flush=True)
        await asyncio.sleep(interval)
        interval = min(max_poll_interval, interval * 1.5)
        pending = still


# ---- the batched stage ------------------------------------------------------------------------------


@dataclass
class BatchOutcome(Generic[R]):
    """What a `--batch` command did: results collected, stage runs, batches submitted or waited on."""

    stage: str
    results: list[R] = field(default_factory=list)
    collected: list[Collected] = field(default_factory=list)
    submitted: list[Submitted] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    online_retries: int = 0

    @property
    def result(self) -> R | None:
        """The last stage run's result (None when a batch was still in progress)."""
        return self.results[-1] if self.results else None

    @property
    def submitted_requests(self) -> int:
        return sum(s.requests for s in self.submitted)

    def __str__(self) -> str:
        lines = []
        refused = [c for c in self.collected if c.status == "failed"]
        collected = [c for c in self.collected if c.status != "failed"]
        for c in refused:
            lines.append(
                f"batch {c.provider_batch_id} failed as a whole ({c.error or 'no reason given'}): "
                f"its {c.failed} requests are batched again"
            )
        if collected:
            answered = sum(c.answered for c in collected)
            failed = sum(c.failed for c in collected)
            tokens_in = sum(c.input_tokens for c in collected)
            tokens_out = sum(c.output_tokens for c in collected)
            cost = sum(c.cost for c in collected)
            lines.append(
                f"batch collected: {answered} answers from {len(collected)} job(s)"
                + (f", {failed} failed (sent online)" if failed else "")
                + f" | tokens {tokens_in} in / {tokens_out} out | ${cost:.4f} at the batch price"
            )
        if self.results:
            rounds = f"after {len(self.results)} rounds: " if len(self.results) > 1 else ""
            lines.append(rounds + str(self.results[-1]))
        if self.online_retries:
            lines.append(f"batch: {self.online_retries} requests the batch failed were sent online")
        if self.submitted:
            ids = ", ".join(s.provider_batch_id for s in self.submitted)
            lines.append(
                f"batch submitted: {self.submitted_requests} requests ({ids}); "
                "run the same command again to collect"
            )
        elif self.waiting:
            state = ", ".join(f"{w.provider_batch_id} {w.status} {w.done}/{w.total}" for w in self.waiting)
            lines.append(f"batch in progress: {state}; run the same command again later (or add --wait)")
        elif self.results:
            lines.append("batch: nothing left to submit")
        return "\n".join(lines)


async def run_calls(
    store: Store, stack: ModelStack, stage: str, run_stage: Callable[[], Awaitable[R]], opts: StageOptions
) -> R | BatchOutcome[R]:
    """A stage's calls as its options say: made now, or through the provider's batch API (--batch)."""
    if opts.batch:
        return await run_batched(store, stack, stage, run_stage, wait=opts.wait, progress=opts.progress)
    return await run_stage()


async def run_batched(
    store: Store,
    stack: ModelStack,
    stage: str,
    run_stage: Callable[[], Awaitable[R]],
    *,
    wait: bool = False,
    progress: bool = True,
    poll_interval: float | None = None,
    max_poll_interval: float | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> BatchOutcome[R]:
    """Run a stage in batch mode (see the module docstring); `run_stage` runs it once over
    `stack.backend`, which is swapped for a BatchRecorder meanwhile."""
    backend = batch_backend(stack)
    spec = stack.spec
    outcome: BatchOutcome[R] = BatchOutcome(stage)
    client = BatchClient(backend)
    try:
        for _round in range(max_rounds):
            jobs = open_jobs(store, stage, spec)
            if jobs:
                collected, waiting = await poll(
                    store,
                    client,
                    jobs,
                    wait=wait,
                    poll_interval=POLL_INTERVAL if poll_interval is None else poll_interval,
                    max_poll_interval=MAX_POLL_INTERVAL if max_poll_interval is None else max_poll_interval,
                    progress=progress,
                )
                outcome.collected += collected
                still = {w.provider_batch_id for w in waiting}
                outcome.submitted = [s for s in outcome.submitted if s.provider_batch_id in still]
                if waiting:
                    # Running the stage now would batch the waiting requests a second time.
                    outcome.waiting = waiting
                    return outcome
            recorder = BatchRecorder(stack, backend, online_keys(store, spec))
            metered = stack.backend
            stack.backend = recorder  # type: ignore[assignment]
            try:
                outcome.results.append(await run_stage())
                outcome.online_retries += recorder.online
                if recorder.requests:
                    outcome.submitted += await submit(store, client, recorder, stage, spec)
            finally:
                stack.backend = metered
                recorder.close()
            if not recorder.requests or not wait:
                return outcome
        return outcome
    finally:
        await client.aclose()
