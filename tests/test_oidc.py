"""HASHREC_AUTH=oidc over real sockets: tokens and keys the test makes itself, the
issuer's JWKS served on a local port; a valid token's subject is the user, and an expired
token, one for another audience and one with a bad signature are each refused with 401 and
a message that says which."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.gateway.identity import OidcSettings
from services.gateway.server import Settings
from tests.servers import LoopThread, free_port, start_gateway, stop_gateway

ISSUER, AUDIENCE, KID = "https://issuer.test", "hashrec", "test-key-1"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(key: rsa.RSAPrivateKey) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}).encode()

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


@pytest.fixture(scope="module")
def gateway(jwks_url: str) -> Iterator[str]:
    loop = LoopThread()
    server, url = start_gateway(loop, Settings(
        recommender=f"127.0.0.1:{free_port()}", auth="oidc",
        oidc=OidcSettings(ISSUER, AUDIENCE, jwks_url, leeway=0)))
    yield url
    stop_gateway(loop, server)
    loop.close()


def _token(key: rsa.RSAPrivateKey, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "oidc-user-7", "iat": now,
               "exp": now + 300, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": KID})


def _me(gateway: str, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{gateway}/api/me", headers=headers, timeout=30)


def test_a_valid_token_makes_its_subject_the_user(gateway: str,
                                                  key: rsa.RSAPrivateKey) -> None:
    response = _me(gateway, _token(key))
    assert response.status_code == 200 and response.json()["user"] == "oidc-user-7"
    assert _me(gateway, None).json()["user"] is None  # anonymous, not an error


@pytest.mark.parametrize(("claims", "message"), [
    ({"exp": int(time.time()) - 60}, "expired"),
    ({"aud": "someone-else"}, "another audience"),
    ({"iss": "https://evil.example"}, "another issuer"),
])
def test_a_bad_token_is_a_401_that_says_why(gateway: str, key: rsa.RSAPrivateKey,
                                           claims: dict, message: str) -> None:
    response = _me(gateway, _token(key, **claims))
    assert response.status_code == 401 and message in response.json()["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_token_signed_by_another_key_is_refused(gateway: str) -> None:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = _me(gateway, _token(forger))  # the issuer's key id, not its key
    assert response.status_code == 401 and "signature" in response.json()["message"]
    garbage = _me(gateway, "not.a.jwt")
    assert garbage.status_code == 401 and "not a JWT" in garbage.json()["message"]


def test_feedback_needs_a_token(gateway: str) -> None:
    response = httpx.post(f"{gateway}/api/feedback", json={
        "user": "oidc-user-7", "hashtags": ["food"], "image_sha256": "0" * 64}, timeout=30)
    assert response.status_code == 401 and "sign in" in response.json()["message"]
