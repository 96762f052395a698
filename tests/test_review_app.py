"""The review web app over real HTTP (uvicorn on 127.0.0.1): flow, durability and the security rules."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from actlabel.errors import UserError
from actlabel.review.app import create_app, is_loopback, serve
from actlabel.store import Store

from .test_review_support import PNG_1X1, expected_order, make_project, reviews, running

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
ROWID = re.compile(r'name="rowid" value="(\d+)"')
ITEM_ID = re.compile(r'data-item-id="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, html[:500]
    return match.group(1)


def start(client: httpx.Client, name: str) -> str:
    """Open the app as a new browser would and give a reviewer name; returns the first review page."""
    page = client.get("/")
    assert page.status_code == 200 and 'action="/name"' in page.text
    res = client.post("/name", data={"csrf": csrf_of(page.text), "name": name})
    assert res.status_code == 303
    page = client.get("/")
    assert page.status_code == 200
    return page.text


def save(client: httpx.Client, html: str, label: str, **extra: str) -> httpx.Response:
    data = {
        "csrf": csrf_of(html),
        "rowid": ROWID.search(html).group(1),
        "label": label,
        "duration_ms": "1234",
    } | extra
    return client.post("/save", data=data)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "p", 12, images=True)


@pytest.fixture
def base(project: Path) -> Iterator[str]:
    with running(create_app(project)) as url:
        yield url


def test_review_flow_saves_are_committed_and_ordered(project: Path, base: str) -> None:
    order = expected_order(12)
    with httpx.Client(base_url=base) as client:
        html = start(client, "ann")
        assert ITEM_ID.search(html).group(1) == order[0]
        res = save(client, html, "negative")
        assert res.status_code == 303 and res.headers["location"] == "/"
        # Committed before the response: another connection sees it right away.
        assert [(r["item_id"], r["label"], r["reviewer"], r["duration_ms"]) for r in reviews(project)] == [
            (order[0], "negative", "ann", 1234)
        ]
        html = client.get("/").text
        assert ITEM_ID.search(html).group(1) == order[1]
        assert "1 of 12 reviewed" in html
        # Saving the same item twice keeps both records; the latest wins.
        save(client, html, "positive")
        client.post("/undo", data={"csrf": csrf_of(html)})
        html = client.get("/").text
        assert ITEM_ID.search(html).group(1) == order[1] and 'id="reopened"' in html
        save(client, html, "neutral")
    recs = [r for r in reviews(project) if r["item_id"] == order[1]]
    assert [r["label"] for r in recs] == ["positive", "neutral"]
    with Store.open(project) as store:
        assert store.latest("reviews", ["label"])[store.rowid_of(order[1])] == ("neutral",)


def test_security_headers_and_escaping_rules(base: str) -> None:
    with httpx.Client(base_url=base) as client:
        res = client.get("/")
    csp = res.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert res.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in res.text  # no inline script: the CSP would block it anyway
    session = res.cookies.get("actlabel_session") or ""
    assert len(session) > 20
    assert (
        "httponly" in res.headers["set-cookie"].lower()
        and "samesite=strict" in res.headers["set-cookie"].lower()
    )


def test_post_without_or_with_wrong_csrf_is_refused(project: Path, base: str) -> None:
    with httpx.Client(base_url=base) as client:
        html = start(client, "ann")
        rowid = ROWID.search(html).group(1)
        assert client.post("/save", data={"rowid": rowid, "label": "positive"}).status_code == 403
        assert (
            client.post("/save", data={"rowid": rowid, "label": "positive", "csrf": "0" * 64}).status_code
            == 403
        )
        # A token from another session does not work either.
        with httpx.Client(base_url=base) as other:
            foreign = csrf_of(other.get("/").text)
        assert (
            client.post("/save", data={"rowid": rowid, "label": "positive", "csrf": foreign}).status_code
            == 403
        )
        # The right token from a foreign origin is refused too.
        res = client.post(
            "/save",
            data={"rowid": rowid, "label": "positive", "csrf": csrf_of(html)},
            headers={"origin": "http://evil.example"},
        )
        assert res.status_code == 403
        assert client.post("/skip", data={"rowid": rowid}).status_code == 403
        assert client.post("/undo", data={}).status_code == 403
        # JSON bodies are not accepted (a form post is the only way in).
        assert client.post("/save", json={"rowid": rowid}).status_code == 403
        assert (
            client.post("/save", json={"rowid": rowid}, headers={"x-csrf-token": csrf_of(html)}).status_code
            == 415
        )
        assert save(client, html, "nonsense").status_code == 400
        assert save(client, html, "positive", rowid="999999").status_code == 404
        assert save(client, html, "positive", headers="x").status_code == 303  # extra fields are ignored
    assert len(reviews(project)) == 1


def test_body_size_limit(base: str) -> None:
    with httpx.Client(base_url=base) as client:
        html = start(client, "ann")
        res = client.post("/save", data={"csrf": csrf_of(html), "rowid": "1", "label": "x" * 70_000})
        assert res.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(80):
                yield b"a" * 1024

        res = client.post(
            "/save", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert res.status_code == 413


def _raw(base: str, path: str, host: str | None = None) -> tuple[int, str, bytes]:
    """A request with the path exactly as given (HTTP clients normalise `..` away): status, head, body."""
    hostport = base.removeprefix("http://")
    ip, port = hostport.split(":")
    with socket.create_connection((ip, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or hostport}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), body


def _raw_get(base: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    status, _, body = _raw(base, path, host)
    return status, body


def test_images_by_rowid_only(project: Path, base: str) -> None:
    with Store.open(project) as store:
        rowid = store.rowid_of("it0001")
    status, body = _raw_get(base, f"/image/{rowid}")
    assert status == 200 and body == PNG_1X1
    secret = project.parent / "secret.txt"
    secret.write_text("top secret")
    for path in (
        "/image/../../../../etc/passwd",
        "/image/%2e%2e/%2e%2e/etc/passwd",
        f"/image/{rowid}/../../actlabel.db",
        "/image/..%2f..%2fsecret.txt",
        "/image/" + str(secret),
        "/image//etc/passwd",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2f..%2factlabel.db",
        "/image/999999",
        "/image/-1",
    ):
        status, body = _raw_get(base, path)
        assert status == 404, (path, status)
        assert b"top secret" not in body and b"root:" not in body and b"import" not in body


def test_ids_beyond_sqlite_integers_are_404_not_500(project: Path, base: str) -> None:
    for path in ("/image/" + "9" * 23, "/image/9223372036854775808", "/image/0"):
        status, body = _raw_get(base, path)
        assert status == 404, (path, status, body[:200])
    with httpx.Client(base_url=base) as client:
        html = start(client, "ann")
        for rowid in ("9" * 23, "-" + "9" * 30, "1e9"):
            res = save(client, html, "positive", rowid=rowid)
            assert res.status_code == 400, (rowid, res.status_code)
            res = client.post("/skip", data={"csrf": csrf_of(html), "rowid": rowid})
            assert res.status_code == 303, (rowid, res.status_code)
    assert reviews(project) == []


def test_an_image_swapped_for_a_symlink_outside_is_not_served(
    project: Path, base: str, tmp_path: Path
) -> None:
    secret = tmp_path / "outside.png"
    secret.write_bytes(PNG_1X1 + b"top secret")
    with Store.open(project) as store:
        rowid = store.rowid_of("it0003")
        image = Path(store.get_item(rowid).image_path)
        inside = store.rowid_of("it0004")
    assert _raw_get(base, f"/image/{rowid}")[0] == 200
    image.unlink()
    image.symlink_to(secret)
    status, body = _raw_get(base, f"/image/{rowid}")
    assert status == 404 and b"top secret" not in body
    # a symlink that stays inside the project folder is still served
    other = Path(str(image).replace("img3", "img4"))
    image.unlink()
    image.symlink_to(other)
    assert _raw_get(base, f"/image/{rowid}") == (200, PNG_1X1)
    assert _raw_get(base, f"/image/{inside}") == (200, PNG_1X1)


def test_images_imported_from_a_table_are_served_from_its_folder(tmp_path: Path) -> None:
    from actlabel.project import Project

    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "a.png").write_bytes(PNG_1X1)
    (data / "t.csv").write_text("image,text\nimgs/a.png,hello\n")
    with Project.init(tmp_path / "proj", ["positive", "negative"]) as proj:
        proj.import_file(data / "t.csv", image_column="image", text_columns=["text"])
        rowid = proj.store.item_rowids()[0]
    with running(create_app(tmp_path / "proj")) as url:
        assert _raw_get(url, f"/image/{rowid}") == (200, PNG_1X1)


def test_missing_image_file_is_404(project: Path, base: str) -> None:
    with Store.open(project) as store:
        rowid = store.rowid_of("it0002")
        Path(store.get_item(rowid).image_path).unlink()
    assert _raw_get(base, f"/image/{rowid}")[0] == 404


def test_dns_rebinding_host_is_refused(base: str) -> None:
    assert _raw_get(base, "/", host="evil.example")[0] == 400
    assert _raw_get(base, "/", host="localhost:1234")[0] == 200


def test_two_reviewers_get_distinct_items(project: Path, base: str) -> None:
    with httpx.Client(base_url=base) as a, httpx.Client(base_url=base) as b:
        ha, hb = start(a, "ann"), start(b, "bob")
        assert ITEM_ID.search(ha).group(1) != ITEM_ID.search(hb).group(1)
        assert ITEM_ID.search(a.get("/").text).group(1) == ITEM_ID.search(ha).group(1)


def test_access_token(project: Path) -> None:
    token = "t" * 8 + "0123456789abcdef"
    with running(create_app(project, token=token)) as base, httpx.Client(base_url=base) as client:
        assert client.get("/").status_code == 403
        assert client.get("/static/review.js").status_code == 403
        assert client.get("/?token=wrong-token-wrong-token").status_code == 403
        res = client.get(f"/?token={token}")
        assert res.status_code == 303 and res.headers["location"] == "/"  # token leaves the URL
        page = client.get("/")
        assert page.status_code == 200
        html = start(client, "ann")
        # Without the token cookie a POST is refused even with a valid CSRF token.
        with httpx.Client(
            base_url=base, cookies={"actlabel_session": client.cookies["actlabel_session"]}
        ) as bare:
            assert save(bare, html, "positive").status_code == 403
        assert save(client, html, "positive").status_code == 303
        # The token redirect stays on this site, whatever the path looks like.
        status, head, _ = _raw(base, f"//evil.example/x?token={token}")
        assert status == 303 and "location: /evil.example/x\r\n" in head.lower()
        # With a token the app is meant to be reached by name: any Host is fine.
        assert client.get("/", headers={"host": "review.lab.example"}).status_code == 200
    assert len(reviews(project)) == 1


def test_non_local_bind_without_token_is_refused(project: Path) -> None:
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.8.0.1")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    with Store.open(project) as store:
        with pytest.raises(
            UserError, match="refusing to serve the review app on 0.0.0.0 without an access token"
        ):
            serve(store, host="0.0.0.0", port=0, open_browser=False, token=None)
        with pytest.raises(UserError, match="at least 16 characters"):
            serve(store, host="127.0.0.1", port=0, open_browser=False, token="short")


def _start_cli(root: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "actlabel.cli", "review", str(root), "--no-browser", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "open http" in line:
            return proc, line.split("open ", 1)[1].split()[0]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the server did not start: {line!r}")


def test_cli_non_local_host_gets_a_generated_token(project: Path) -> None:
    proc, url = _start_cli(project, "--host", "0.0.0.0")
    try:
        assert "?token=" in url
        token = url.split("?token=")[1]
        port = url.split(":")[2].split("/")[0]
        local = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=local) as client:
            assert client.get("/").status_code == 403
            assert client.get(f"/?token={token}").status_code == 303
            assert client.get("/").status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_killing_the_server_loses_no_saved_answer(project: Path) -> None:
    proc, url = _start_cli(project, "--reviewer", "kim")
    try:
        with httpx.Client(base_url=url.rstrip("/")) as client:
            html = client.get("/").text
            for label in ("positive", "negative", "neutral", "positive"):
                assert save(client, html, label).status_code == 303
                html = client.get("/").text
    finally:
        proc.kill()  # SIGKILL: no shutdown handler runs
        proc.wait(10)
    recs = reviews(project)
    assert [r["label"] for r in recs] == ["positive", "negative", "neutral", "positive"]
    assert {r["reviewer"] for r in recs} == {"kim"}


def test_a_thousand_labels(tmp_path: Path) -> None:
    labels = [f"label {i:04d}" for i in range(1000)]
    root = make_project(tmp_path / "p", 3, labels=labels)
    with running(create_app(root)) as base, httpx.Client(base_url=base) as client:
        html = start(client, "ann")
        assert html.count('name="label" value="label ') >= 1000
        assert html.count("data-key=") == 9  # digits for the first nine; the filter box for the rest
        assert 'id="label-filter"' in html
        assert save(client, html, "label 0999").status_code == 303
    assert [r["label"] for r in reviews(root)] == ["label 0999"]


def test_project_busy_is_a_503_and_recovers(project: Path) -> None:
    app = create_app(project)
    app.state.queue.store.conn.execute("PRAGMA busy_timeout = 100")  # not 30 s in a test
    with running(app) as base, httpx.Client(base_url=base) as client:
        html = start(client, "ann")
        with Store.open(project) as other:
            other.conn.execute("BEGIN IMMEDIATE")  # another process writing, e.g. a long import
            res = save(client, html, "positive")
            assert res.status_code == 503 and "busy" in res.text
            other.conn.execute("ROLLBACK")
        assert save(client, html, "positive").status_code == 303
    assert len(reviews(project)) == 1
