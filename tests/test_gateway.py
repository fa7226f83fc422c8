"""The HTTP gateway over real sockets, in front of the real stack: answers, errors, limits,
health and readiness, photos, security headers."""

from __future__ import annotations

import hashlib
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from services.gateway.server import Settings
from services.gateway.uploads import RecentUploads
from tests.servers import free_port, signed_up, start_gateway, stop_gateway


@pytest.fixture(scope="module")
def gateway(stack: dict, data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[str]:
    server, url = start_gateway(stack["loop"], Settings(
        recommender=stack["recommender"].address, photo_root=data_dir,
        accounts_path=tmp_path_factory.mktemp("accounts") / "accounts.sqlite"))
    yield url
    stop_gateway(stack["loop"], server)


@pytest.fixture(scope="module")
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=120) as client:
        yield client


def _photo(data_dir: Path, name: str = "0000008.jpg") -> bytes:
    return (data_dir / "food" / "images" / name).read_bytes()


def _recommend(client: httpx.Client, data: bytes, content_type: str = "image/jpeg",
               **fields: str) -> httpx.Response:
    return client.post("/api/recommend", files={"image": ("photo.jpg", data, content_type)},
                       data=fields)


def test_a_real_photo_gets_k_hashtags_with_their_signals(client: httpx.Client,
                                                         data_dir: Path) -> None:
    data = _photo(data_dir)
    response = _recommend(client, data, k="7")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["hashtags"]) == 7 and answer["image_sha256"] == \
        hashlib.sha256(data).hexdigest()
    scores = [h["score"] for h in answer["hashtags"]]
    assert scores == sorted(scores, reverse=True)
    assert all(h["signals"] for h in answer["hashtags"][:3])
    assert {"method", "score", "rank"} == set(answer["hashtags"][0]["signals"][0])
    assert answer["model_version"] and answer["degraded"] is False


@pytest.mark.parametrize(("data", "content_type", "message"), [
    (bytes(range(256)) * 64, "image/jpeg", "not a decodable image"),
    (b"a shopping list", "text/plain", "the upload is text/plain, not an image"),
    (b"", "image/png", "the image is empty"),
])
def test_what_is_not_a_photo_is_a_400_that_says_so(client: httpx.Client, data: bytes,
                                                   content_type: str, message: str) -> None:
    response = _recommend(client, data, content_type)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "INVALID_ARGUMENT" and message in body["message"]


def test_bad_k_and_a_form_without_an_image_are_400(client: httpx.Client,
                                                   data_dir: Path) -> None:
    response = _recommend(client, _photo(data_dir), k="1000")
    assert response.status_code == 400 and "k must be between 1 and 100" in \
        response.json()["message"]
    response = client.post("/api/recommend", data={"user": "u1"},
                           files={"other": ("x", b"x", "text/plain")})
    assert response.status_code == 400 and "no image" in response.json()["message"]


def test_30_mb_is_refused_with_413(client: httpx.Client) -> None:
    response = _recommend(client, b"\xff" * (30 * 1024 * 1024))
    assert response.status_code == 413
    assert response.json()["error"] == "PAYLOAD_TOO_LARGE"
    assert "20,971,520 bytes" in response.json()["message"]


def test_an_upload_over_the_limit_is_refused_before_its_body_is_read(gateway: str) -> None:
    """The headers announce 30 MB and not one byte of body follows: the answer comes at
    once (a server that waited for the body would never answer)."""
    host, port = gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"POST /api/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 31457280\r\n\r\n")
        answer = raw.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413")


def test_a_streamed_body_is_cut_off_at_the_limit(gateway: str) -> None:
    """A well-formed form whose 30 MB file comes in chunks, with no Content-Length."""
    def body() -> Iterator[bytes]:
        yield (b'--b\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(30):
            yield b"\xff" * (1024 * 1024)
        yield b"\r\n--b--\r\n"

    response = httpx.post(f"{gateway}/api/recommend", content=body(), timeout=60,
                          headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413, response.text


def test_feedback_for_a_recent_photo_by_its_sha256_then_retrieve_finds_it(
        client: httpx.Client, stack: dict, data_dir: Path) -> None:
    data = _photo(data_dir, "0000022.jpg")
    hashtag = stack["trained"].vocabulary[0]
    user = stack["user"].servicer.lookup.vocabulary  # the user model's hashtags
    chosen = next(h for h in user if h == hashtag) if hashtag in user else user[0]
    with signed_up(client.base_url, "web-ann") as ann:
        digest = _recommend(ann, data).json()["image_sha256"]
        response = ann.post("/api/feedback", json={"image_sha256": digest,
                                                   "hashtags": [chosen, "🙂"]})
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["accepted"] == [chosen] and reply["posts"] == 1 and reply["ignored"]
        photos = ann.get("/api/retrieve", params={"hashtag": chosen, "k": 100}
                         ).json()["photos"]
        mine = [p for p in photos if p["photo_id"] == digest]
        assert len(mine) == 1 and mine[0]["url"] == f"/photos/{digest}"
        shown = ann.get(mine[0]["url"])
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
        assert hashlib.sha256(shown.content).hexdigest() == digest  # the upload as kept
        assert Image.open(io.BytesIO(shown.content)).size == Image.open(io.BytesIO(data)).size
        training = [p for p in photos if p["url"] and p["photo_id"] != digest]
        assert training and client.get(training[0]["url"]).status_code == 200


def test_feedback_errors_name_what_is_wrong(client: httpx.Client, data_dir: Path) -> None:
    anonymous = client.post("/api/feedback", json={"hashtags": ["food"],
                                                   "image_sha256": "0" * 64})
    assert anonymous.status_code == 401 and "sign in" in anonymous.json()["message"]
    with signed_up(client.base_url, "web-bob") as bob:
        unknown = bob.post("/api/feedback", json={"hashtags": ["food"],
                                                  "image_sha256": "0" * 64})
        assert unknown.status_code == 404 and "send it again" in unknown.json()["message"]
        not_json = bob.post("/api/feedback", content=b"{nope",
                            headers={"content-type": "application/json"})
        assert not_json.status_code == 400
        by_upload = bob.post("/api/feedback", files={"image": ("p.jpg", _photo(data_dir),
                                                              "image/jpeg")},
                             data={"hashtags": "🙂,,"})
        assert by_upload.status_code == 400
        assert "no usable hashtag" in by_upload.json()["message"]


@pytest.mark.parametrize("path", [
    "/photos/..%2F..%2F..%2Fetc%2Fpasswd", "/photos/../../etc/passwd", "/photos/%2Fetc%2Fpasswd",
    "/photos/food/tags/0000008.jpg.txt", "/photos/" + "a" * 64, "/photos/nowhere.jpg",
])
def test_photos_outside_the_photo_root_or_not_photos_are_not_found(client: httpx.Client,
                                                                   path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert b"root:" not in response.content


def test_every_answer_carries_the_security_headers(client: httpx.Client) -> None:
    for path in ("/", "/api/config", "/docs", "/photos/x.jpg"):
        headers = client.get(path).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert headers["x-content-type-options"] == "nosniff"


def test_the_page_and_the_api_description_load_nothing_from_elsewhere(
        client: httpx.Client) -> None:
    page = client.get("/").text
    docs = client.get("/docs").text
    for html in (page, docs):
        assert "http://" not in html and "https://" not in html
        assert "<script>" not in html  # no inline script: only <script src=...>
    api = client.get("/openapi.json").json()
    assert {"/api/recommend", "/api/feedback", "/api/retrieve", "/api/config"} <= set(
        api["paths"])  # the page's config is API too: a client reads its communities there
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
    # no user ids published; a model of one community offers no choice of community
    assert client.get("/api/config").json() == {"max_upload_bytes": 20 * 1024 * 1024,
                                                "auth": "local", "communities": []}


def test_health_readiness_and_metrics(client: httpx.Client, stack: dict) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    stack["loop"].call(stack["recommender"].set_serving(False))
    try:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "NOT_SERVING" in not_ready.json()["message"]
    finally:
        stack["loop"].call(stack["recommender"].set_serving(True))
    assert client.get("/readyz").status_code == 200
    import gc

    gc.collect()  # the gateway times its process's collections too
    metrics = client.get("/metrics").text
    assert 'hashrec_http_requests_total{route="/readyz",status="503"}' in metrics
    full = next(line for line in metrics.splitlines()
                if line.startswith('hashrec_gc_pause_seconds_count{generation="2"}'))
    assert float(full.rsplit(" ", 1)[1]) >= 1


def test_the_recommender_down_is_a_503_with_a_message(stack: dict, data_dir: Path) -> None:
    server, url = start_gateway(stack["loop"], Settings(
        recommender=f"127.0.0.1:{free_port()}", timeout=5, auth="none"))
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            response = _recommend(client, _photo(data_dir))
            assert response.status_code == 503
            assert "cannot answer now" in response.json()["message"]
            assert "127.0.0.1" not in response.text  # the address goes to the log only
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
    finally:
        stop_gateway(stack["loop"], server)


def test_recent_uploads_keep_within_their_count_and_bytes_and_to_their_owner() -> None:
    uploads = RecentUploads(max_count=3, max_bytes=10)
    first = uploads.add("ann", b"aaaa", "image/png")
    uploads.add("ann", b"bbbb", "image/png")
    uploads.get("ann", first)  # used again: kept over the others
    uploads.add("ann", b"cccc", "image/png")  # 12 bytes > 10: the least recently used goes
    assert uploads.get("ann", first) is not None and len(uploads) == 2 and uploads.bytes == 8
    assert uploads.get("bob", first) is None and uploads.get(None, first) is None
    uploads.add("ann", b"x" * 11, "image/png")  # larger than the store: answered, not kept
    assert len(uploads) == 2
    uploads.remove("ann", first)
    assert uploads.get("ann", first) is None and uploads.bytes == 4


def test_an_upload_is_shown_back_to_its_owner_only_re_encoded(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "PNG")
    anonymous = _recommend(client, buffer.getvalue(), "image/png").json()
    assert client.get(f"/photos/{anonymous['image_sha256']}").status_code == 404  # not kept
    with signed_up(client.base_url, "web-cy") as cy:
        answer = _recommend(cy, buffer.getvalue(), "image/png").json()
        shown = cy.get(f"/photos/{answer['image_sha256']}")
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(shown.content))
        assert image.format == "JPEG" and image.size == (64, 48)
        assert max(abs(a - b) for a, b in zip(image.getpixel((30, 20)), (10, 200, 30),
                                              strict=True)) < 8
    assert client.get(f"/photos/{answer['image_sha256']}").status_code == 404


def test_a_recommender_that_does_not_answer_in_time_is_a_504(stack: dict,
                                                            data_dir: Path) -> None:
    """A gRPC server that takes the call and never answers: DEADLINE_EXCEEDED → 504."""
    import asyncio

    import grpc

    class Silent(grpc.GenericRpcHandler):
        def service(self, details):
            async def never(request, context):
                await asyncio.sleep(3600)

            return grpc.unary_unary_rpc_method_handler(never)

    async def silent_server():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((Silent(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    silent, port = stack["loop"].call(silent_server())
    server, url = start_gateway(stack["loop"], Settings(
        recommender=f"127.0.0.1:{port}", timeout=1, auth="none"))
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            response = _recommend(client, _photo(data_dir))
        assert response.status_code == 504
        assert response.json()["error"] == "DEADLINE_EXCEEDED"
        assert "did not answer in time" in response.json()["message"]
    finally:
        stop_gateway(stack["loop"], server)
        stack["loop"].call(silent.stop(0))
