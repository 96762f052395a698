"""Label Studio live: an ML backend that Label Studio calls, and a receiver for its annotation webhooks.

    actlabel serve labelstudio DIR [--host 127.0.0.1] [--port 9090] [--secret S]

In Label Studio: Settings > Model > Connect Model, name `actlabel`, URL `http://HOST:PORT/s/SECRET`
(as printed). Label Studio then calls `/health`, `/setup` and `/predict` below that URL, and creates
a webhook to `<URL>/webhook` by itself, so answers given in Label Studio come back with no further
setup; a webhook added by hand may use `http://HOST:PORT/webhook?token=SECRET` or the header
`X-Actlabel-Secret: SECRET` instead. Tasks are found by `data.item_id`, which both `actlabel export
DIR tasks.json --format labelstudio` and a table export (`actlabel export DIR items.csv`) carry;
`DIR/labelstudio-live.xml` is a labelling config to paste into the project (a `label` Choices and a
read-only `critic` TextArea). Label Studio 1.2x refuses ML backends and webhooks on local
addresses unless started with `ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false`.

The request and response shapes follow Label Studio's side of the protocol (label_studio/ml/
api_connector.py: what it sends; ml/models.py: what it reads back; webhooks/models.py: the webhook
payloads) and the reference server in HumanSignal/label-studio-ml-backend (label_studio_ml/api.py),
and are tested against a real Label Studio 1.23 server (tests/test_labelstudio_live.py):

- `GET /health` -> `{"status": "UP", "model_class": "actlabel", ...}`.
- `POST /setup` `{"project": "ID.TIMESTAMP", "schema": LABEL_CONFIG, "hostname", "access_token",
  "extra_params"}` -> `{"model_version": "actlabel"}`. The schema is checked (a Choices control
  whose values are the project's labels); the access token is not kept.
- `POST /predict` `{"tasks": [{"id", "data": {...}}], "project", "label_config", "params"}` ->
  `{"results": [one prediction per task, in order]}`, each `{"model_version": "actlabel", "score":
  S, "result": [regions]}`: a `choices` region with the machine label and a per-region `score`, and,
  when the config has a TextArea named `critic`, a `textarea` region with the critic's proposed
  label, error probability and rationale. S = 1 - error_prob, the probability that the machine
  label is right, is how Label Studio reads a prediction score: its uncertainty sampling and the
  Data Manager's "Prediction score" sorted ascending show the most suspicious items first (the file
  export writes the same score). Both count only predictions whose model_version is the project's,
  which Label Studio sets to the connected model's name: hence the fixed version `actlabel` and the
  name to give the model. Label Studio asks only for tasks without a prediction of that version:
  after a new annotate or critique run, delete the predictions (Actions) and retrieve them again.
- `POST /webhook` Label Studio's webhook payload (the `annotation` with its `task` nested, both
  lists for ANNOTATIONS_CREATED): each submitted answer becomes a review (source
  `labelstudio-live`, reviewer = the user's e-mail when the payload expands `completed_by`, else
  `labelstudio-user-<id>`: Label Studio's webhook names users by id only; time = the annotation's
  `updated_at`, duration = `lead_time`), with `selected_when_reviewed` telling whether actlabel's
  selection had chosen the item (0: out of design, which the statistics treat with review_prob 1).
  Cancelled (skipped) annotations and answers equal to the item's current review store nothing;
  other actions are acknowledged and ignored.

Bad input gets a 4xx with `{"error": "<one line>"}` and stores nothing: a task without
`data.item_id` or naming no item of the project, a label outside the project's labels, a webhook
without the shared secret (401) or with a wrong one (403), malformed JSON. A payload is checked
whole before anything is written, so one bad annotation in a batch stores none of it.

Security: it binds 127.0.0.1 by default and then checks the Host header (DNS rebinding); on any
other address `/setup` and `/predict` need the secret too (the `/s/SECRET` URL, Label Studio's
Basic Authentication with the secret as password, or the header). Bodies are limited to 16 MiB.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hmac
import json
import os
import secrets
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from actlabel import multilabel
from actlabel.errors import ProjectBusy, UserError
from actlabel.review import adapters
from actlabel.review.app import LOOPBACK_NAMES, _host_name, bind_socket, is_loopback
from actlabel.review.queue import ReviewItem, load_items
from actlabel.store import Store

SOURCE = "labelstudio-live"
DEFAULT_PORT = 9090  # the port Label Studio's own ML backends use
SECRET_ENV = "ACTLABEL_LABELSTUDIO_SECRET"
MIN_SECRET_CHARS = 16
MAX_BODY_BYTES = 16 << 20  # a "retrieve predictions" over thousands of text tasks is one request
CONFIG_NAME = "labelstudio-live.xml"
CRITIC_CONTROL = "critic"
MODEL_VERSION = "actlabel"  # see the module docstring: the name to give the model in Label Studio
REVIEW_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
SECRET_HEADER = "x-actlabel-secret"


class LiveError(Exception):
    """A request the server refuses: HTTP status and a one-line message for the JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---- the labelling config ------------------------------------------------------------------------


@dataclass(frozen=True)
class Controls:
    """Where predictions go in a Label Studio labelling config."""

    label: str  # the Choices control's name
    label_to: str  # the object it labels (toName)
    values: frozenset[str] | None  # its Choice values (None: no config given, the project's labels)
    critic: str | None = None  # a TextArea for the critic's note, if the config has one
    critic_to: str | None = None


@functools.lru_cache(maxsize=32)
def parse_label_config(config: str | None, labels: tuple[str, ...], default_to: str = "text") -> Controls:
    """The Choices control for the project's labels (named `label`, else the only fitting one)."""
    if not config or not config.strip():
        return Controls(adapters.QUESTION, default_to, None)
    end = config.rfind("</View>")
    # Label Studio keeps sample data in a comment after </View>: text after the root is not XML.
    text = config[: end + len("</View>")] if end != -1 else config
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise LiveError(422, f"the labelling config is not valid XML ({exc})") from None
    allowed = set(labels)
    choices = [el for el in root.iter("Choices") if el.get("name")]
    named = [el for el in choices if el.get("name") == adapters.QUESTION]
    fitting = [el for el in choices if {c.get("value") for c in el.iter("Choice")} <= allowed]
    picked = named or (fitting if len(fitting) == 1 else [])
    if not picked:
        raise LiveError(
            422,
            f"the labelling config has no Choices control named {adapters.QUESTION!r} with the project's labels "
            f"({', '.join(labels[:10])}); paste the config from {CONFIG_NAME}",
        )
    control = picked[0]
    values = [c.get("value") for c in control.iter("Choice")]
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise LiveError(
            422,
            f"Choices {control.get('name')!r} offers {unknown[0]!r}, which is not one of the project's labels "
            f"({', '.join(labels[:10])})",
        )
    critic = next(
        (el for el in root.iter("TextArea") if el.get("name") == CRITIC_CONTROL and el.get("toName")), None
    )
    return Controls(
        control.get("name"),
        control.get("toName") or default_to,
        frozenset(values),
        critic.get("name") if critic is not None else None,
        critic.get("toName") if critic is not None else None,
    )


def live_config(
    labels: list[Any], has_text: bool = True, has_image: bool = False, *, multi_label: bool = False
) -> str:
    """The labelling config for live use: the item, the `label` question (checkboxes,
    `choice="multiple"`, for a multi-label task), the critic's note."""
    view = ET.Element("View")
    if has_text:
        ET.SubElement(view, "Text", name="text", value="$text")
    if has_image:
        ET.SubElement(view, "Image", name="image", value="$image")
    target = "text" if has_text else "image"
    adapters.add_label_question(view, labels, target, multi_label=multi_label)
    ET.SubElement(
        view, "Header", value="actlabel critic (sort by prediction score, ascending: most suspicious first)"
    )
    ET.SubElement(view, "TextArea", name=CRITIC_CONTROL, toName=target, editable="false", rows="3")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


# ---- predictions ---------------------------------------------------------------------------------


def data_version(store: Store) -> str:
    """Names the latest annotation and critique records: it changes when the predictions would."""
    return f"a{store.last_record_id('annotations')}-c{store.last_record_id('critiques')}"


def prediction_score(item: ReviewItem) -> float | None:
    """The probability the machine label is right (1 - error_prob); 0 without a machine label,
    which must go to a human; None without a critique."""
    if item.machine_label is None:
        return 0.0
    return adapters._confidence(item)


def prediction(
    item: ReviewItem, controls: Controls, version: str, *, multi_label: bool = False
) -> dict[str, Any]:
    score = prediction_score(item)
    regions: list[dict[str, Any]] = []
    # a multi-label machine label is a stored set: Label Studio takes its members as the choices
    chosen = (
        None
        if item.machine_label is None
        else multilabel.decode(item.machine_label)
        if multi_label
        else [item.machine_label]
    )
    if chosen is not None and (controls.values is None or set(chosen) <= controls.values):
        region: dict[str, Any] = {
            "id": f"actlabel-{item.rowid}",
            "from_name": controls.label,
            "to_name": controls.label_to,
            "type": "choices",
            "value": {"choices": chosen},
        }
        if score is not None:
            region["score"] = score
        regions.append(region)
    if controls.critic and (item.error_prob is not None or item.proposed_label is not None):
        regions.append(
            {
                "id": f"actlabel-{item.rowid}-critic",
                "from_name": controls.critic,
                "to_name": controls.critic_to,
                "type": "textarea",
                "value": {"text": [adapters._critic_note(item)]},
            }
        )
    out: dict[str, Any] = {"model_version": version, "result": regions}
    if score is not None:
        out["score"] = score
    return out


# ---- the app -------------------------------------------------------------------------------------


def _task_where(task: Any, n: int) -> str:
    if isinstance(task, dict) and task.get("id") is not None:
        return f"task {task['id']}"
    return f"task #{n}"


class LiveBackend:
    """Request handlers over one open store."""

    def __init__(self, store: Store, *, secret: str, protect_predictions: bool) -> None:
        self.store = store
        self.secret = secret
        self.protect_predictions = protect_predictions
        self.labels = tuple(store.task.label_names)
        has_text = bool(store.task.text_columns) or not store.task.image_column
        self.default_to = "text" if has_text else "image"
        # Label Studio task id -> item rowid, learnt from /predict: a webhook from a Label Studio that
        # does not nest the task (older versions) still finds its item.
        self.task_rowids: dict[int, int] = {}

    # ---- helpers -------------------------------------------------------------------------------
    def check_secret(self, request: Request) -> None:
        given = _given_secret(request)
        if given is None:
            raise LiveError(
                401, "this endpoint needs the shared secret (?token=SECRET or the X-Actlabel-Secret header)"
            )
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            raise LiveError(403, "wrong shared secret")

    def rowid_for(self, task: Any, where: str) -> int:
        if not isinstance(task, dict):
            raise LiveError(400, f"{where}: not a JSON object")
        data = task.get("data")
        item_id = data.get("item_id") if isinstance(data, dict) else None
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)  # a CSV import into Label Studio may read a numeric id as a number
        if not isinstance(item_id, str) or not item_id:
            raise LiveError(
                422,
                f"{where}: no data.item_id (create the tasks from `actlabel export DIR tasks.json --format "
                "labelstudio` or a table export, which carry it)",
            )
        rowid = self.store.rowid_of(item_id)
        if rowid is None:
            raise LiveError(404, f"{where}: item {item_id!r} is not in this project")
        if isinstance(task.get("id"), int):
            self.task_rowids[task["id"]] = rowid
        return rowid

    # ---- endpoints -----------------------------------------------------------------------------
    def authorize(self, request: Request, *, predictions: bool) -> None:
        """The secret is needed on the webhook always, on /setup and /predict off loopback, and
        everywhere below /s/SECRET (so a wrong secret fails when Label Studio connects)."""
        if "secret" in request.path_params or (predictions and self.protect_predictions):
            self.check_secret(request)

    async def health(self, request: Request) -> Response:
        self.authorize(request, predictions=False)
        return JSONResponse(
            {
                "status": "UP",
                "model_class": "actlabel",
                "model_version": MODEL_VERSION,
                "data_version": data_version(self.store),
            }
        )

    async def setup(self, request: Request) -> Response:
        self.authorize(request, predictions=True)
        body = await _json_body(request)
        schema = body.get("schema")
        if schema is not None and not isinstance(schema, str):
            raise LiveError(400, "`schema` must be the labelling config as a string")
        parse_label_config(schema, self.labels, self.default_to)
        return JSONResponse({"model_version": MODEL_VERSION})

    async def predict(self, request: Request) -> Response:
        self.authorize(request, predictions=True)
        body = await _json_body(request)
        tasks = body.get("tasks")
        if isinstance(tasks, dict):  # one task sent bare, as the reference server's tests do
            tasks = [tasks]
        if not isinstance(tasks, list):
            raise LiveError(400, "`tasks` must be a list of Label Studio tasks")
        config = body.get("label_config")
        controls = parse_label_config(
            config if isinstance(config, str) else None, self.labels, self.default_to
        )
        rowids = [self.rowid_for(task, _task_where(task, n)) for n, task in enumerate(tasks, 1)]
        items = {it.rowid: it for it in load_items(self.store, sorted(set(rowids)))}
        return JSONResponse(
            {
                "results": [
                    prediction(items[r], controls, MODEL_VERSION, multi_label=self.store.task.multi_label)
                    for r in rowids
                ]
            }
        )

    async def metrics(self, request: Request) -> Response:
        self.authorize(request, predictions=False)
        return JSONResponse({})

    async def webhook(self, request: Request) -> Response:
        self.check_secret(request)
        body = await _json_body(request)
        action = body.get("action")
        if action not in REVIEW_ACTIONS:
            return JSONResponse({"status": "ignored", "action": action})
        annotations, tasks = body.get("annotation"), body.get("task")
        if isinstance(annotations, dict):
            annotations = [annotations]
            tasks = [tasks] if isinstance(tasks, dict) else tasks
        if not isinstance(annotations, list) or not annotations:
            raise LiveError(
                400, f"{action}: no `annotation` in the payload (turn on 'Send payload' for the webhook)"
            )
        nested = (
            {t.get("id"): t for t in tasks or [] if isinstance(t, dict)} if isinstance(tasks, list) else {}
        )
        records, skipped, unanswered = self._answers(annotations, nested)
        stored, unchanged, not_selected = self._store(records)
        return JSONResponse(
            {
                "status": "ok",
                "stored": stored,
                "unchanged": unchanged,
                "skipped": skipped,
                "unanswered": unanswered,
                "not_selected": not_selected,
            }
        )

    def _answers(
        self, annotations: list[Any], nested: dict[Any, Any]
    ) -> tuple[list[dict[str, Any]], int, int]:
        labels = adapters.task_labels(self.store)
        records, skipped, unanswered = [], 0, 0
        for n, ann in enumerate(annotations, 1):
            if not isinstance(ann, dict):
                raise LiveError(400, f"annotation #{n}: not a JSON object")
            task_id = ann.get("task")
            where = f"annotation {ann.get('id', f'#{n}')} (task {task_id})"
            task = nested.get(task_id)
            if task is None and len(nested) == 1 and len(annotations) == 1:
                task = next(iter(nested.values()))
            if task is not None:
                rowid = self.rowid_for(task, where)
            elif isinstance(task_id, int) and task_id in self.task_rowids:
                rowid = self.task_rowids[task_id]
            else:
                raise LiveError(
                    422, f"{where}: the payload has no task data with data.item_id (turn on 'Send payload')"
                )
            if ann.get("was_cancelled"):
                skipped += 1
                continue
            try:
                label = adapters._labelstudio_choice(ann, "webhook", where, labels)  # type: ignore[arg-type]
            except UserError as exc:
                raise LiveError(422, str(exc)) from None
            if label is None:
                unanswered += 1
                continue
            records.append(
                {
                    "item_rowid": rowid,
                    "reviewer": adapters._labelstudio_user(ann.get("completed_by")),
                    "label": label,
                    "source": SOURCE,
                    "duration_ms": adapters._duration_ms(ann.get("lead_time")),
                    "created_at": _timestamp(ann.get("updated_at") or ann.get("created_at")),
                }
            )
        return records, skipped, unanswered

    def _store(self, records: list[dict[str, Any]]) -> tuple[int, int, int]:
        """Append the new answers in one transaction; (stored, unchanged, stored for unselected items)."""
        rowids = sorted({r["item_rowid"] for r in records})
        current = self.store.latest("reviews", ("reviewer", "label", "source"), rowids=rowids)
        selected = self.store.selected_now(rowids)
        fresh, unchanged = [], 0
        for r in records:
            key = (r["reviewer"], r["label"], r["source"])
            if current.get(r["item_rowid"]) == key:
                unchanged += 1
                continue
            current[r["item_rowid"]] = key
            fresh.append(r | {"selected_when_reviewed": int(r["item_rowid"] in selected)})
        if fresh:
            try:
                self.store.add_reviews(fresh)
            except ProjectBusy:
                raise
            except UserError as exc:
                raise LiveError(422, str(exc)) from None
        return len(fresh), unchanged, sum(1 for r in fresh if not r["selected_when_reviewed"])


def _given_secret(request: Request) -> str | None:
    if "secret" in request.path_params:
        return str(request.path_params["secret"])
    header = request.headers.get(SECRET_HEADER)
    if header:
        return header.strip()
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return ""
        return password
    return request.query_params.get("token")


def _timestamp(raw: Any) -> float:
    """Label Studio's ISO-8601 time (`2021-08-17T13:52:48.536303Z`) as epoch seconds; now if absent."""
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(raw).timestamp()
    return time.time()


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise LiveError(413, f"request body over {MAX_BODY_BYTES >> 20} MiB")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LiveError(400, f"the body is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(data, dict):
        raise LiveError(400, "the body must be a JSON object")
    return data


def _endpoint(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Every refusal as a 4xx (or 503 while another process writes) with a one-line JSON error."""

    @functools.wraps(fn)
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except LiveError as exc:
            return JSONResponse({"error": str(exc).splitlines()[0]}, exc.status)
        except ProjectBusy as exc:
            return JSONResponse({"error": f"{exc} (nothing was stored; Label Studio may send it again)"}, 503)

    return wrapped


class _Guard:
    """Host check on a loopback bind (DNS rebinding) and the body limit, before routing."""

    def __init__(self, app: Callable, *, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
            refusal = None
            if (
                self.allowed_hosts is not None
                and _host_name(headers.get("host", "")) not in self.allowed_hosts
            ):
                refusal = (400, "unexpected Host header")
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                refusal = (413, f"request body over {MAX_BODY_BYTES >> 20} MiB")
            if refusal is not None:
                await JSONResponse({"error": refusal[1]}, refusal[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(
    store: Store,
    *,
    secret: str,
    protect_predictions: bool = False,
    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES,
    close_store: bool = False,
) -> Any:
    """The Label Studio backend over an open store (an ASGI app)."""
    if len(secret) < MIN_SECRET_CHARS:
        raise UserError(f"the shared secret must be at least {MIN_SECRET_CHARS} characters")
    if not all(ch.isascii() and (ch.isalnum() or ch in "-_.~") for ch in secret):
        raise UserError("the shared secret may hold only letters, digits and - _ . ~ (it goes into a URL)")
    backend = LiveBackend(store, secret=secret, protect_predictions=protect_predictions)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if close_store:
            store.close()

    endpoints = [
        Route("/", _endpoint(backend.health), methods=["GET"]),
        Route("/health", _endpoint(backend.health), methods=["GET"]),
        Route("/setup", _endpoint(backend.setup), methods=["POST"]),
        Route("/predict", _endpoint(backend.predict), methods=["POST"]),
        Route("/webhook", _endpoint(backend.webhook), methods=["POST"]),
        Route("/metrics", _endpoint(backend.metrics), methods=["GET"]),
    ]
    # The same endpoints below /s/SECRET: Label Studio's own ML webhook (ML URL + /webhook) carries
    # no headers, so the secret has to travel in the URL it is given.
    routes = [*endpoints, Mount("/s/{secret}", routes=endpoints)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.backend = backend
    return _Guard(app, allowed_hosts=allowed_hosts)


def write_config(store: Store) -> Path:
    task = store.task
    has_image = bool(task.image_column)
    has_text = bool(task.text_columns) or not has_image
    path = store.root / CONFIG_NAME
    adapters._write_atomic(path, live_config(task.labels, has_text, has_image, multi_label=task.multi_label))
    return path


def serve(
    store: Store, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, secret: str | None = None
) -> None:
    """Run the backend until Ctrl+C. secret: given, else $ACTLABEL_LABELSTUDIO_SECRET, else a fresh one."""
    import uvicorn

    secret = secret or os.environ.get(SECRET_ENV) or secrets.token_urlsafe(24)
    loopback = is_loopback(host)
    app = build_app(
        store,
        secret=secret,
        protect_predictions=not loopback,
        allowed_hosts=LOOPBACK_NAMES if loopback else None,
    )
    config_path = write_config(store)
    sock = bind_socket(host, port)
    try:
        bound = sock.getsockname()[1]
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound}"
        print(f"actlabel serve labelstudio: {store.count_items()} items (data {data_version(store)})")
        print("  in Label Studio: Settings > Model > Connect Model, name 'actlabel', URL (shown once):")
        print(f"    {url}/s/{secret}")
        print("  Label Studio then sends the answers given there to that URL's /webhook by itself.")
        if loopback:
            print("  Label Studio must run on this machine, started with ML_BLOCK_LOCAL_IP=false")
            print("  SSRF_PROTECTION_ENABLED=false (it refuses local addresses otherwise).")
        print(f"  labelling config to paste (Settings > Labeling Interface > Code): {config_path}")
        print("  press Ctrl+C to stop; every answer is stored as it arrives", flush=True)
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
