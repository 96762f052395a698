"""The review web app: Starlette, server-rendered Jinja2 pages and a little plain JavaScript.

Each page shows one item (text and/or image), the machine label, the critic's proposal, rationale
and error probability, and one button per label; keys pick labels (see static/review.js). Every
answer is a plain form POST that commits the review before the redirect to the next item, so what a
reviewer has moved past is on disk, whatever happens to the server afterwards.

Security, because the app may be reachable by others on the network:
- it binds 127.0.0.1 by default; any other address needs an access token (`serve` generates one
  with `secrets` and prints the link once). `?token=` once sets an HttpOnly cookie.
- on a loopback bind the Host header must name a loopback host, which defeats DNS rebinding.
- every POST needs the token (when set), a CSRF token bound to the browser session (HMAC of the
  session id with a per-project secret) and, when the browser sends one, a same-origin Origin.
- item text is HTML-escaped by Jinja's autoescape and never inserted with innerHTML; scripts come
  only from /static (CSP without inline script); images are served by item rowid from the path
  stored at import, never from a path in the request.
- request bodies are limited to 64 KiB (413); responses carry CSP, nosniff, frame-ancestors 'none'.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import threading
import time
import webbrowser
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from actlabel import multilabel
from actlabel.data import image_is_servable
from actlabel.errors import ProjectBusy, UserError
from actlabel.review.queue import LEASE_S, ReviewQueue, UnknownItem
from actlabel.store import Store

HERE = Path(__file__).parent
MAX_BODY_BYTES = 64 * 1024
MAX_NAME_CHARS = 64
MAX_DURATION_MS = 24 * 3600 * 1000
TOKEN_ENV = "ACTLABEL_REVIEW_TOKEN"
MIN_TOKEN_CHARS = 16
SESSION_COOKIE = "actlabel_session"
TOKEN_COOKIE = "actlabel_token"
REVIEWER_COOKIE = "actlabel_reviewer"
SOURCE = "human"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_ROWID = 2**63 - 1

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
        b" form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin (not no-referrer): browsers then still send Origin on same-origin POSTs.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


# ---- the guard: headers, Host check, body limit, access token ---------------------------------


class _BodyTooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware applied to every HTTP request before routing."""

    def __init__(self, app: Callable, *, token: str | None, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        conn = HTTPConnection(scope)
        if (
            self.allowed_hosts is not None
            and _host_name(conn.headers.get("host", "")) not in self.allowed_hosts
        ):
            await PlainTextResponse("unexpected Host header", 400)(scope, receive, send_with_headers)
            return
        length = conn.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await PlainTextResponse("request body too large", 413)(scope, receive, send_with_headers)
            return
        if self.token is not None:
            given = conn.query_params.get("token")
            if given is not None and scope["method"] == "GET":
                if not hmac.compare_digest(given.encode(), self.token.encode()):
                    await _denied()(scope, receive, send_with_headers)
                    return
                # Move the token from the URL into a cookie, and drop it from the address bar and history.
                rest = [(k, v) for k, v in conn.query_params.multi_items() if k != "token"]
                # One leading slash only: "//host" would be a redirect to another site.
                target = "/" + scope["path"].lstrip("/") + (f"?{urlencode(rest)}" if rest else "")
                response = RedirectResponse(target, 303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/")
                await response(scope, receive, send_with_headers)
                return
            cookie = conn.cookies.get(TOKEN_COOKIE, "")
            if not hmac.compare_digest(cookie.encode(), self.token.encode()):
                await _denied()(scope, receive, send_with_headers)
                return

        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            if response_started:
                raise
            await PlainTextResponse("request body too large", 413)(scope, receive, send_with_headers)


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _denied() -> Response:
    return PlainTextResponse(
        "access token required: open the link that `actlabel review` printed (it contains ?token=...)", 403
    )


# ---- the app ----------------------------------------------------------------------------------


@dataclass
class _Form:
    fields: dict[str, str]
    lists: dict[str, list[str]] = field(default_factory=dict)  # every value of a repeated field

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def get_all(self, key: str) -> list[str]:
        return self.lists.get(key, [])


class ReviewApp:
    """Request handlers over one ReviewQueue.

    The queue's work (a few indexed SQLite statements, well under a millisecond) runs directly on the
    event loop. Handing it to a worker thread cost more than the work itself (two thread switches per
    request, over a millisecond on a busy machine), and bought no parallelism: all store access goes
    through one connection and the queue's lock anyway.
    """

    def __init__(self, queue: ReviewQueue, *, secret: bytes, reviewer: str | None, project_name: str) -> None:
        self.queue = queue
        self.secret = secret
        self.default_reviewer = _clean_name(reviewer) if reviewer else None
        self.project_name = project_name
        self.labels = queue.store.task.labels
        self.label_names = frozenset(lab.name for lab in self.labels)
        self.multi_label = queue.store.task.multi_label
        self.asset_version = _asset_version()
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # templates ship with the package: no stat() of three files per page
        )
        self.env.filters["shown"] = _shown_label

    # ---- helpers ----------------------------------------------------------------------------
    def csrf_for(self, session_id: str) -> str:
        return hmac.new(self.secret, session_id.encode(), hashlib.sha256).hexdigest()

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session_id, new_session = _session(request)
        context.setdefault("reviewer", self.reviewer_of(request))
        html = self.env.get_template(template).render(
            csrf=self.csrf_for(session_id), project=self.project_name, v=self.asset_version, **context
        )
        response = HTMLResponse(html, status, headers={"cache-control": "no-store"})
        if new_session:
            response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict", path="/")
        return response

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status, message=message)

    def reviewer_of(self, request: Request) -> str | None:
        raw = request.cookies.get(REVIEWER_COOKIE)
        if raw:
            name = _clean_name(unquote(raw))
            if name:
                return name
        return self.default_reviewer

    async def read_form(self, request: Request) -> _Form | Response:
        """Parse a url-encoded POST and check CSRF (session-bound token) and Origin."""
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin is not None and origin != own:
            return self.error(request, 403, "cross-origin request refused")
        referer = request.headers.get("referer")
        if origin is None and referer is not None and not referer.startswith(own + "/"):
            return self.error(request, 403, "cross-origin request refused")
        is_form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        body = await request.body()
        parsed: dict[str, list[str]] = {}
        if is_form:
            try:
                parsed = parse_qs(
                    body.decode("utf-8"), keep_blank_values=True, max_num_fields=20 + len(self.labels)
                )
            except (UnicodeDecodeError, ValueError):
                return self.error(request, 400, "malformed form data")
        form = _Form({k: v[-1] for k, v in parsed.items()}, parsed)
        # CSRF before anything else about the request, so a forged request learns nothing.
        session_id = request.cookies.get(SESSION_COOKIE)
        given = form.get("csrf") or request.headers.get("x-csrf-token", "")
        if not session_id or not given or not hmac.compare_digest(given, self.csrf_for(session_id)):
            return self.error(request, 403, "missing or stale form token: reload the page and try again")
        if not is_form:
            return self.error(request, 415, "expected a form submission")
        return form

    # ---- pages ------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        reviewer = self.reviewer_of(request)
        if reviewer is None or request.query_params.get("change_name"):
            return self.render(request, "name.html", current=reviewer)
        item, progress = self.queue.next_item(reviewer), self.queue.progress()
        if item is None:
            return self.render(request, "done.html", progress=progress)
        if self.multi_label:
            machine_set = multilabel.decode(item.machine_label) if item.machine_label else None
            return self.render(
                request,
                "review_multi.html",
                item=item,
                progress=progress,
                labels=self.labels,
                checked=set(machine_set or ()),
                machine_ok=machine_set is not None,
                proposal_ok=bool(item.proposed_label) and item.proposed_label != item.machine_label,
                shown_at=int(time.time() * 1000),
            )
        return self.render(
            request,
            "review.html",
            item=item,
            progress=progress,
            labels=self.labels,
            machine_ok=item.machine_label in self.label_names,
            proposal_ok=item.proposed_label in self.label_names,
            shown_at=int(time.time() * 1000),
        )

    async def set_name(self, request: Request) -> Response:
        form = await self.read_form(request)
        if isinstance(form, Response):
            return form
        name = _clean_name(form.get("name"))
        if name is None:
            return self.render(
                request,
                "name.html",
                400,
                current=None,
                problem=f"Use 1 to {MAX_NAME_CHARS} printable characters.",
            )
        response = RedirectResponse("/", 303)
        response.set_cookie(
            REVIEWER_COOKIE,
            quote(name, safe=""),
            max_age=365 * 24 * 3600,
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    async def save(self, request: Request) -> Response:
        form = await self.read_form(request)
        if isinstance(form, Response):
            return form
        reviewer = self.reviewer_of(request)
        if reviewer is None:
            return RedirectResponse("/", 303)
        rowid = _int(form.get("rowid"))
        label = form.get("label")
        if rowid is None:
            return self.error(request, 400, "no item given")
        if self.multi_label:
            # a set: an accept button's stored set (`label`), else the ticked boxes (none: the empty set)
            try:
                label = self.queue.store.review_label(rowid, label if label else form.get_all("labels"))
            except UserError as exc:
                return self.error(request, 400, str(exc))
        elif label not in self.label_names:
            return self.error(request, 400, f"{label!r} is not one of the labels")
        duration = _int(form.get("duration_ms"))
        if duration is None and (shown := _int(form.get("shown_at"))) is not None:
            duration = int(time.time() * 1000) - shown  # no JavaScript: time since the page was rendered
        if duration is not None and not 0 <= duration <= MAX_DURATION_MS:
            duration = None
        try:
            self.queue.save(reviewer, rowid, label, duration_ms=duration, source=SOURCE)
        except UnknownItem as exc:
            return self.error(request, 404, str(exc))
        return RedirectResponse("/", 303)

    async def skip(self, request: Request) -> Response:
        form = await self.read_form(request)
        if isinstance(form, Response):
            return form
        reviewer, rowid = self.reviewer_of(request), _int(form.get("rowid"))
        if reviewer is not None and rowid is not None:
            self.queue.skip(reviewer, rowid)
        return RedirectResponse("/", 303)

    async def undo(self, request: Request) -> Response:
        form = await self.read_form(request)
        if isinstance(form, Response):
            return form
        reviewer = self.reviewer_of(request)
        if reviewer is not None:
            self.queue.undo(reviewer)
        return RedirectResponse("/", 303)

    async def image(self, request: Request) -> Response:
        rowid = request.path_params["rowid"]
        if not 0 < rowid <= MAX_ROWID:  # SQLite integers are 64-bit: a longer id names no item
            return PlainTextResponse("not found", 404)
        path = self.queue.image_path(rowid)
        # Only the path stored for this item at import; nothing from the request reaches the file system.
        # Resolved again now: a file swapped for a symlink after import must not lead outside the
        # folders images were imported from.
        if not path or not image_is_servable(self.queue.store, path):
            return PlainTextResponse("not found", 404)
        return FileResponse(os.path.realpath(path), headers={"cache-control": "private, max-age=3600"})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return PlainTextResponse("not found", 404)

    async def busy(self, request: Request, exc: Exception) -> Response:
        # Another process held the project's write lock past SQLite's busy timeout (a long import).
        return self.error(request, 503, f"{exc} (nothing was lost; try again in a moment)")


class _Static(StaticFiles):
    """Static files, cached for good: their URLs carry a hash of their content (see ASSET_VERSION)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "public, max-age=31536000, immutable"
        return response


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted((HERE / "static").iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _session(request: Request) -> tuple[str, bool]:
    sid = request.cookies.get(SESSION_COOKIE)
    if sid and 20 <= len(sid) <= 100:
        return sid, False
    # Keep the new id on the request so everything rendered for it uses the same one.
    return request.scope.setdefault("actlabel.new_session", secrets.token_urlsafe(32)), True


def _shown_label(value: str | None) -> str:
    """A label for the page: a stored set as `a, b` (`(no labels)` for the empty set)."""
    if value is None:
        return "none"
    if multilabel.is_stored_set(value):
        return ", ".join(multilabel.decode(value) or []) or "(no labels)"
    return value


def _clean_name(raw: str | None) -> str | None:
    name = " ".join((raw or "").split())
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        return None
    return name


def _int(raw: str | None) -> int | None:
    """A form integer, or None when absent, malformed or beyond SQLite's 64-bit range."""
    try:
        value = int(raw) if raw not in (None, "") and len(raw) <= 20 else None
    except ValueError:
        return None
    return value if value is not None and -MAX_ROWID - 1 <= value <= MAX_ROWID else None


def _secret(store: Store) -> bytes:
    """A per-project CSRF secret, kept in the store so open pages stay valid across server restarts."""
    key = "review_csrf_secret"
    value = store.get_meta(key)
    if value is None:
        store.set_meta(key, secrets.token_hex(32))
        value = store.get_meta(key)
    return bytes.fromhex(value)


def build_app(
    store: Store,
    *,
    token: str | None = None,
    reviewer: str | None = None,
    lease_s: float = LEASE_S,
    allowed_hosts: frozenset[str] | None | str = "auto",
    close_store: bool = False,
) -> Starlette:
    """The review app over an open store. allowed_hosts "auto": loopback names only, unless a token is set."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UserError(f"the access token must be at least {MIN_TOKEN_CHARS} characters")
    if allowed_hosts == "auto":
        allowed_hosts = LOOPBACK_NAMES if token is None else None
    queue = ReviewQueue(store, lease_s=lease_s)
    handlers = ReviewApp(queue, secret=_secret(store), reviewer=reviewer, project_name=store.root.name)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Give the items on screen back to other processes, then close what we opened.
        queue.release_all()
        if close_store:
            store.close()

    app = Starlette(
        routes=[
            Route("/", handlers.index, methods=["GET"]),
            Route("/name", handlers.set_name, methods=["POST"]),
            Route("/save", handlers.save, methods=["POST"]),
            Route("/skip", handlers.skip, methods=["POST"]),
            Route("/undo", handlers.undo, methods=["POST"]),
            Route("/image/{rowid:int}", handlers.image, methods=["GET"]),
            Mount("/static", _Static(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(Guard, token=token, allowed_hosts=allowed_hosts)],
        exception_handlers={404: handlers.not_found, ProjectBusy: handlers.busy},
        lifespan=lifespan,
    )
    app.state.queue = queue
    return app


def create_app(
    project_dir: str | Path,
    *,
    token: str | None = None,
    reviewer: str | None = None,
    lease_s: float = LEASE_S,
    allowed_hosts: frozenset[str] | None | str = "auto",
) -> Starlette:
    """The review app for the project in `project_dir` (opens its own store, closed at shutdown)."""
    store = Store.open(project_dir)
    try:
        return build_app(
            store,
            token=token,
            reviewer=reviewer,
            lease_s=lease_s,
            allowed_hosts=allowed_hosts,
            close_store=True,
        )
    except BaseException:
        store.close()
        raise


def serve(
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = True,
    reviewer: str | None = None,
    token: str | None = "auto",
    lease_s: float = LEASE_S,
) -> None:
    """Run the review app until Ctrl+C.

    token "auto": none on a loopback address; otherwise $ACTLABEL_REVIEW_TOKEN or a fresh random one,
    printed once in the link. token None on a non-loopback address is refused.
    """
    import uvicorn

    loopback = is_loopback(host)
    if token == "auto":
        token = os.environ.get(TOKEN_ENV) or (None if loopback else secrets.token_urlsafe(24))
    if token is None and not loopback:
        raise UserError(
            f"refusing to serve the review app on {host} without an access token"
            f" (anyone on the network could change labels); leave --host at 127.0.0.1 or set {TOKEN_ENV}"
        )
    sock = bind_socket(host, port)
    try:
        app = build_app(store, token=token, reviewer=reviewer, lease_s=lease_s)
        bound_port = sock.getsockname()[1]
        shown_host = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        url = f"http://{'[' + shown_host + ']' if ':' in shown_host else shown_host}:{bound_port}/"
        if token is not None:
            url += f"?token={token}"
        progress = app.state.queue.progress()
        print(f"actlabel review: {progress.describe(', ')}; open {url}", flush=True)
        if token is not None:
            print(
                "  (the link carries the access token and is shown only once; share it only with reviewers)",
                flush=True,
            )
        print("  press Ctrl+C to stop; every answer is saved as it is given", flush=True)
        if open_browser:
            threading.Timer(0.3, webbrowser.open, (url,)).start()
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket for uvicorn (port 0: any free port); a busy port is a one-line UserError."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    # Accepted connections inherit TCP_NODELAY on Linux. Without it, a response written as headers then
    # body waits for the browser's delayed ACK on a kept-alive connection: +40 ms per page.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
