"""The distributed engine: a stage's model calls spread over a pool of Ray actors.

`--engine ray` wraps the model in `RayBackend`, below the response cache:

    MeteredBackend(CachedBackend(RayBackend(workers...)))

so this process (the driver) keeps everything that must happen once: building prompts, the cache
(a cached call never reaches a worker, so nothing is paid twice), parsing, and the single store
writer (the engine batches the records, one per item). Each worker is an async Ray actor holding
its own backend, built from the model spec and endpoint in the worker: the API key is read from
the worker's environment and never travels in task arguments. A `chat` picks the worker with the
fewest calls in flight and awaits its ObjectRef on the driver's event loop.

Faults: an actor that dies (a killed process, a lost node) is restarted by Ray (`max_restarts`) and
the calls it had in flight are retried on it (`max_task_retries`); only those calls run again, and
the driver writes each item once because it writes nothing until the answer is back. When the
retries run out, the call fails as a RetryableError, the driver's own retry policy asks another
worker, and a worker that is gone for good leaves the pool. A call in flight when its worker died
had reached the endpoint, and its answer was lost: it is the one call a crash can cost, as in a
single process (cache.py).

Why Ray rather than Dask or Spark: the work is many small, I/O-bound calls with state per worker
(an HTTP connection pool, or a loaded local model), which is what Ray's async actors are; Dask's
futures have no restartable stateful workers with per-task retry of in-flight calls, and Spark's
batch model would hold records back until a partition finishes instead of streaming them to the
one writer.

Cluster: `ray start --head` on one machine, `ray start --address=HEAD:6379` on the others (each
with actlabel installed and the API key in its environment), then `RAY_ADDRESS=HEAD:6379 actlabel
annotate DIR --engine ray`. Without RAY_ADDRESS a local Ray instance is started for the command.
Image items are read by the worker from the item's path: on a cluster the project folder must be
on a filesystem every node mounts at the same path.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from actlabel.errors import UserError
from actlabel.models.base import Backend, ChatRequest, ChatResponse, ModelError, RetryableError
from actlabel.models.spec import ModelSpec

#: restarts of a dead worker, and retries of each call it had in flight, before giving up on it
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
#: calls one worker runs at once; the driver's --concurrency is the real bound on calls in flight
WORKER_CONCURRENCY = 1024


class ChatWorker:
    """A Ray actor (made remote in RayBackend): one backend, built here from the spec."""

    def __init__(self, spec: str, base_url: str | None, opts: dict[str, Any]) -> None:
        from actlabel.models import load_backend

        self.backend = load_backend(spec, base_url=base_url, **opts)
        self.calls = 0

    async def chat(self, request: ChatRequest) -> tuple[str, Any, float | None]:
        """("ok", response JSON, None) or ("retry" | "error", message, retry_after).

        Model errors come back as values, not exceptions, so the driver re-raises exactly the type
        the engine and retry policy expect (a Ray-wrapped exception would not be one)."""
        self.calls += 1
        try:
            response = await self.backend.chat(request)
        except RetryableError as exc:
            return "retry", str(exc), exc.retry_after
        except ModelError as exc:
            return "error", str(exc), None
        return "ok", response.to_json(), None

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "calls": self.calls}


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'actlabel[distributed]'") from None
    return ray


class RayBackend:
    """A Backend whose calls run on `workers` Ray actors (see the module docstring).

    local: the same model built in this process, for its spec and capabilities (the cache key must
    be the spec the workers' backends have). spec / base_url / opts: how each worker builds it.
    workers: actors in the pool [default: the cluster's CPUs]. num_cpus: what each actor reserves
    [default: 0 for endpoints (I/O bound; SPREAD places them over the nodes), 1 for local models].
    """

    engine = "ray"

    def __init__(
        self,
        local: Backend,
        *,
        spec: str,
        base_url: str | None = None,
        workers: int | None = None,
        opts: dict[str, Any] | None = None,
        num_cpus: float | None = None,
    ) -> None:
        ray = _ray()
        self._ray = ray
        self.local = local
        self.spec = local.spec
        self.supports_logprobs = local.supports_logprobs
        self.supports_images = local.supports_images
        self._owns_ray = False
        if not ray.is_initialized():
            # RAY_ADDRESS (or a running `ray start --head` here) joins a cluster; else a local one.
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            self._owns_ray = True
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if num_cpus is None:
            # an endpoint call waits on the network, not a CPU of the worker's node
            num_cpus = 0 if ModelSpec.parse(spec).can("concurrent_calls") else 1
        actor_cls = ray.remote(ChatWorker).options(
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES,
            max_concurrency=WORKER_CONCURRENCY,
            num_cpus=num_cpus,
            scheduling_strategy="SPREAD",
        )
        self.actors: list[Any] = [actor_cls.remote(spec, base_url, dict(opts or {})) for _ in range(workers)]
        self.in_flight = [0] * workers
        self.alive = [True] * workers
        self.calls = [0] * workers

    def _pick(self) -> int:
        best = None
        for i, ok in enumerate(self.alive):
            if ok and (best is None or self.in_flight[i] < self.in_flight[best]):
                best = i
        if best is None:
            raise ModelError(f"{self.spec}: every Ray worker died")
        return best

    async def chat(self, request: ChatRequest) -> ChatResponse:
        ray = self._ray
        i = self._pick()
        self.in_flight[i] += 1
        self.calls[i] += 1
        try:
            kind, payload, retry_after = await self.actors[i].chat.remote(request)
        except ray.exceptions.ActorDiedError as exc:
            # Restarts used up: this worker is gone. The call is retried elsewhere by our policy.
            self.alive[i] = False
            raise RetryableError(f"{self.spec}: Ray worker {i} died: {_first_line(exc)}") from None
        except ray.exceptions.RayError as exc:
            raise RetryableError(f"{self.spec}: Ray worker {i} failed: {_first_line(exc)}") from None
        finally:
            self.in_flight[i] -= 1
        if kind == "ok":
            return ChatResponse.from_json(payload)
        if kind == "retry":
            raise RetryableError(payload, retry_after)
        raise ModelError(payload)

    async def worker_info(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(a.info.remote() for a in self.actors)))

    async def aclose(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor, no_restart=True)
        self.actors = []
        await self.local.aclose()
        if self._owns_ray:
            self._ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def wrap_engine(
    raw: Backend,
    engine: str,
    *,
    spec: str,
    base_url: str | None,
    workers: int | None,
    given: bool,
) -> Backend:
    """`raw` behind the chosen engine (open_model's hook); "async" returns it as is."""
    if engine == "async":
        return raw
    if engine != "ray":
        raise UserError(f"unknown engine {engine!r}: use async or ray")
    if given:
        # A ready backend object cannot be rebuilt in the workers; they need the spec.
        raise UserError("--engine ray builds the model in each worker from --model; pass a model spec")
    return RayBackend(raw, spec=spec, base_url=base_url, workers=workers)
