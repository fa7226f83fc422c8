"""The outside audit's cases against the gateway, each over real sockets in front of the
real stack: who may write a profile, requests from elsewhere, private uploads, stored
bytes, retries, slow clients, leaked internals, bad input, and the rate limits (in
memory, and shared through a real Redis)."""

from __future__ import annotations

import io
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from services.gateway.server import Settings
from tests.servers import RedisServer, signed_up, start_gateway, stop_gateway

SVG = (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script>'
       b'<foreignObject><form action="https://evil.example"><input name="password">'
       b'</form></foreignObject></svg>')


@pytest.fixture(scope="module")
def gateway(stack: dict, data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[str]:
    server, url = start_gateway(stack["loop"], Settings(
        recommender=stack["recommender"].address, photo_root=data_dir,
        accounts_path=tmp_path_factory.mktemp("accounts") / "accounts.sqlite",
        body_timeout=2, header_timeout=2,
        # this module signs up a dozen people and sends feedback quickly from one address
        rate_limits="account=100/minute feedback=50/second"))
    yield url
    stop_gateway(stack["loop"], server)


def _photo(data_dir: Path, name: str = "0000008.jpg") -> bytes:
    return (data_dir / "food" / "images" / name).read_bytes()


def _known_hashtag(stack: dict, answer: dict) -> str:
    known = stack["user"].servicer.lookup.hashtag_rows
    return next(h["hashtag"] for h in answer["hashtags"] if h["hashtag"] in known)


def _recommend(client: httpx.Client, data: bytes, **fields: str) -> httpx.Response:
    return client.post("/api/recommend", files={"image": ("p.jpg", data, "image/jpeg")},
                       data=fields)


def test_nobody_writes_a_profile_but_its_owner(gateway: str, stack: dict,
                                               data_dir: Path) -> None:
    lookup = stack["user"].servicer.lookup
    victim = lookup.user_ids[0]
    posts_before = lookup.post_counts[lookup.user_index[victim]]
    with httpx.Client(base_url=gateway, timeout=120) as stranger:
        # Anonymous: refused, whatever user the form names.
        for body in ({"user": victim, "hashtags": ["dessert"], "image_sha256": "0" * 64},):
            response = stranger.post("/api/feedback", json=body)
            assert response.status_code == 401
        assert "example_users" not in stranger.get("/api/config").json()
        # Nobody can sign in as a simulated user: they have no password.
        refused = stranger.post("/api/account/signin", json={"name": victim,
                                                              "password": "password1"})
        assert refused.status_code == 401
    with signed_up(gateway, victim) as namesake:  # the same name: another user id
        answer = _recommend(namesake, _photo(data_dir)).json()
        response = namesake.post("/api/feedback", json={
            "user": victim, "hashtags": [_known_hashtag(stack, answer)],
            "image_sha256": answer["image_sha256"]})
        assert response.status_code == 200, response.text
        assert namesake.get("/api/me").json()["user"] == f"local:{victim}"
    assert lookup.post_counts[lookup.user_index[victim]] == posts_before
    assert lookup.post_counts[lookup.user_index[f"local:{victim}"]] == 1


def test_state_changes_from_other_sites_and_hosts_are_refused(gateway: str) -> None:
    with signed_up(gateway, "audit-origin") as client:
        body = {"hashtags": ["food"], "image_sha256": "0" * 64}
        cross = client.post("/api/feedback", json=body,
                            headers={"origin": "https://evil.example"})
        assert cross.status_code == 403 and "evil.example" in cross.json()["message"]
        marked = client.post("/api/feedback", json=body,
                             headers={"sec-fetch-site": "cross-site"})
        assert marked.status_code == 403
        plain = client.post("/api/feedback", content=b'{"hashtags": ["food"]}',
                            headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        own = client.post("/api/feedback", json=body, headers={"origin": gateway})
        assert own.status_code == 404  # passed the checks: the photo is unknown
        delete = client.delete("/api/me", headers={"origin": "https://evil.example"})
        assert delete.status_code == 403
        assert client.get("/api/me").json()["user"] == "local:audit-origin"
        host = client.get("/api/me", headers={"host": "evil.example"})
        assert host.status_code == 400
        preflight = client.options("/api/feedback", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers


def test_an_upload_is_seen_by_its_owner_only(gateway: str, stack: dict,
                                             data_dir: Path) -> None:
    with signed_up(gateway, "audit-alice") as alice:
        answer = _recommend(alice, _photo(data_dir, "0000009.jpg")).json()
        hashtag = _known_hashtag(stack, answer)
        saved = alice.post("/api/feedback", json={"hashtags": [hashtag],
                                                   "image_sha256": answer["image_sha256"]})
        assert saved.status_code == 200, saved.text
        url = f"/photos/{answer['image_sha256']}"
        mine = alice.get("/api/retrieve", params={"hashtag": hashtag, "k": 100}).json()
        assert answer["image_sha256"] in [p["photo_id"] for p in mine["photos"]]
        assert alice.get(url).status_code == 200
    with signed_up(gateway, "audit-bob") as bob, \
            httpx.Client(base_url=gateway, timeout=120) as anonymous:
        for client in (bob, anonymous):
            theirs = client.get("/api/retrieve", params={"hashtag": hashtag, "k": 100})
            assert answer["image_sha256"] not in [p["photo_id"]
                                                   for p in theirs.json()["photos"]]
            assert client.get(url).status_code == 404


def test_bytes_that_are_not_a_photo_are_never_stored_or_served(gateway: str,
                                                               data_dir: Path) -> None:
    with signed_up(gateway, "audit-svg") as client:
        for content_type in ("image/svg+xml", "image/jpeg"):
            response = client.post("/api/feedback", data={"hashtags": "food"},
                                   files={"image": ("x.svg", SVG, content_type)})
            assert response.status_code == 400, response.text
            recommended = client.post("/api/recommend",
                                      files={"image": ("x.svg", SVG, content_type)})
            assert recommended.status_code == 400
        assert client.get("/api/me/photos").json() == {"photos": []}
        import hashlib

        assert client.get(f"/photos/{hashlib.sha256(SVG).hexdigest()}").status_code == 404


def test_a_retried_feedback_is_applied_once(gateway: str, stack: dict,
                                            data_dir: Path) -> None:
    with signed_up(gateway, "audit-retry") as client:
        answer = _recommend(client, _photo(data_dir, "0000010.jpg")).json()
        body = {"hashtags": [_known_hashtag(stack, answer)],
                "image_sha256": answer["image_sha256"], "request_id": str(uuid.uuid4())}
        first = client.post("/api/feedback", json=body)
        again = client.post("/api/feedback", json=body)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert again.json() == first.json() and first.json()["posts"] == 1
        body["request_id"] = str(uuid.uuid4())  # a new save is a new post
        assert client.post("/api/feedback", json=body).json()["posts"] == 2


def test_a_slow_body_gets_408_and_slow_headers_lose_the_connection(gateway: str) -> None:
    host, port = gateway.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"POST /api/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 1000\r\n\r\n"
                    # a well-formed start, so only the pace can be refused: a byte that
                    # breaks the framing (the audit's dashes) may be refused with 400 first
                    b"--b\r\nContent-Disposition: form-data; name=\"image\"; "
                    b"filename=\"x.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n")
        answer = b""
        for _ in range(30):  # then a byte a second, as the audit sent
            try:
                raw.sendall(b"x")
            except OSError:
                break
            raw.settimeout(1)
            try:
                answer += raw.recv(4096)
            except TimeoutError:
                continue
            if answer:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 10
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        raw.settimeout(20)
        assert raw.recv(4096) == b""  # closed by the server
    assert time.monotonic() - started < 10


def test_headers_past_16_kib_are_refused_and_the_connection_closed(gateway: str) -> None:
    """llhttp (the C parser the gateway runs) sets no limit of its own on headers."""
    host, port = gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))
                    + b"\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]  # and then closed
    with socket.create_connection((host, int(port)), timeout=30) as raw:  # still serving
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Small: "
                    + b"a" * 1000 + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_errors_name_the_field_and_leak_no_internals(gateway: str, data_dir: Path) -> None:
    with httpx.Client(base_url=gateway, timeout=120) as client:
        for k in ("99999999999", "-1", "0", "ten"):
            response = _recommend(client, _photo(data_dir), k=k)
            assert response.status_code == 400, (k, response.text)
            assert response.json()["message"].startswith("k must be")
        retrieve = client.get("/api/retrieve", params={"hashtag": "food", "k": 10**12})
        assert retrieve.status_code == 400 and "k" in retrieve.json()["message"]


def test_a_small_file_of_many_pixels_is_refused_before_decoding(gateway: str) -> None:
    buffer = io.BytesIO()
    Image.new("1", (6_300, 6_300)).save(buffer, "PNG")  # 39.7 MP in a few kB
    with httpx.Client(base_url=gateway, timeout=120) as client:
        response = client.post("/api/recommend",
                               files={"image": ("bomb.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 400 and "pixels a byte" in response.json()["message"]


def test_repeated_failed_sign_ins_are_throttled_even_with_the_right_password(
        gateway: str) -> None:
    with signed_up(gateway, "audit-guess", password="the right password"):
        pass
    with httpx.Client(base_url=gateway, timeout=60) as client:
        codes = [client.post("/api/account/signin", json={
            "name": "audit-guess", "password": f"wrong {i}"}).status_code for i in range(6)]
        assert codes[:5] == [401] * 5 and codes[5] == 429
        right = client.post("/api/account/signin", json={"name": "audit-guess",
                                                         "password": "the right password"})
        assert right.status_code == 429 and int(right.headers["retry-after"]) >= 1


def test_a_session_ends_at_sign_out_and_a_forged_cookie_is_nobody(gateway: str) -> None:
    with signed_up(gateway, "audit-session") as client:
        cookie = client.cookies["hashrec_session"]
        assert client.get("/api/me").json()["user"] == "local:audit-session"
        assert client.post("/api/account/signout").status_code == 204
    with httpx.Client(base_url=gateway, timeout=60) as replay:
        replay.cookies.set("hashrec_session", cookie)  # a copy taken before sign-out
        assert replay.get("/api/me").json()["user"] is None
        replay.cookies.set("hashrec_session", cookie[:-2] + "xx")
        assert replay.get("/api/me").json()["user"] is None


def test_delete_me_takes_the_profile_the_uploads_and_the_account(
        gateway: str, stack: dict, data_dir: Path) -> None:
    lookup = stack["user"].servicer.lookup
    with signed_up(gateway, "audit-leaver", password="leaving for good") as client:
        answer = _recommend(client, _photo(data_dir, "0000002.jpg")).json()
        hashtag = _known_hashtag(stack, answer)
        assert client.post("/api/feedback", json={
            "hashtags": [hashtag], "image_sha256": answer["image_sha256"]}).status_code == 200
        photos = client.get("/api/me/photos").json()["photos"]
        assert [p["photo_id"] for p in photos] == [answer["image_sha256"]]
        gone = client.delete("/api/me")
        assert gone.status_code == 200, gone.text
        assert gone.json() == {"photos_removed": 1, "profile_removed": True}
        assert client.get("/api/me").json()["user"] is None
    assert not lookup.known("local:audit-leaver")
    with httpx.Client(base_url=gateway, timeout=60) as client:
        again = client.post("/api/account/signin", json={"name": "audit-leaver",
                                                         "password": "leaving for good"})
        assert again.status_code == 401


def test_rate_limits_answer_429_with_retry_after_shared_through_redis(
        stack: dict, data_dir: Path, tmp_path: Path) -> None:
    redis = RedisServer()
    redis.start()
    servers = []
    try:
        for _ in range(2):  # two replicas, one store
            servers.append(start_gateway(stack["loop"], Settings(
                recommender=stack["recommender"].address, photo_root=data_dir,
                accounts_path=tmp_path / "accounts.sqlite",
                rate_limits="recommend=3/minute", redis_url=redis.url)))
        codes = []
        for number in range(4):
            with httpx.Client(base_url=servers[number % 2][1], timeout=60) as client:
                response = client.get("/api/retrieve", params={"hashtag": "food", "k": 3})
                codes.append(response.status_code)
        assert codes[:3] != [429] * 3 and 429 not in codes[:3] and codes[3] == 429
        assert int(response.headers["retry-after"]) >= 1
        assert "too many requests" in response.json()["message"]
    finally:
        for server, _ in servers:
            stop_gateway(stack["loop"], server)
        redis.kill()


def test_connections_past_the_limit_are_answered_503_at_once(stack: dict,
                                                             tmp_path: Path) -> None:
    server, url = start_gateway(stack["loop"], Settings(
        recommender=stack["recommender"].address, accounts_path=tmp_path / "a.sqlite",
        max_connections=2))
    host, port = url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted: the gateway holds two connections
        response = httpx.get(f"{url}/healthz", timeout=10)
        assert response.status_code == 503
    finally:
        for connection in held:
            connection.close()
        stop_gateway(stack["loop"], server)
