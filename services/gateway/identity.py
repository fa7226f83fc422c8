"""Who is asking: the principal of a request, by HASHREC_AUTH.

    local   accounts of the gateway's own (services/gateway/accounts.py): a signed,
            HttpOnly, SameSite=Lax session cookie; the default of `hashrec serve`
    oidc    a bearer JWT from the deployment's identity provider, verified against the
            issuer's JWKS (PyJWT): signature, issuer, audience and expiry; the user id is
            the token's subject
    none    no identity: the request's own ``user`` field is believed. For benchmarks
            only; the gateway logs a warning when it starts so.

Recommend works anonymously (no profile is used); feedback, uploads and "my profile" need
a principal, and the user id always comes from it, never from a form field.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import jwt
from fastapi import Request

from services.gateway.accounts import Accounts
from services.gateway.http import ApiError

log = logging.getLogger(__name__)

MODES = ("local", "oidc", "none")
SESSION_COOKIE = "hashrec_session"
#: the signing algorithms a token may use (never "none", never a shared-secret HMAC:
#: the JWKS holds public keys)
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    jwks_url: str
    leeway: float = 30.0


class OidcVerifier:
    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        # PyJWKClient fetches the key set once and again only for an unknown key id
        self._keys = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300,
                                     timeout=5)

    def subject(self, token: str) -> str:
        """The verified token's subject; ApiError 401 naming what is wrong."""
        try:
            key = self._keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as error:
            log.error("gateway: the identity provider's keys cannot be read: %s", error)
            raise ApiError(503, "UNAVAILABLE", "the sign-in service cannot be reached; "
                           "try again in a moment") from None
        except jwt.PyJWKClientError as error:
            raise _unauthorized(f"the token's signing key is not the issuer's ({error})") from None
        except jwt.DecodeError:
            raise _unauthorized("the bearer token is not a JWT") from None
        try:
            claims = jwt.decode(token, key, algorithms=ALGORITHMS,
                                audience=self.settings.audience, issuer=self.settings.issuer,
                                leeway=self.settings.leeway,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired: sign in again") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized("the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as error:
            raise _unauthorized(f"the token lacks the {error.claim!r} claim") from None
        except jwt.InvalidTokenError as error:
            raise _unauthorized(f"the token is not valid: {error}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject.strip() or len(subject) > 256:
            raise _unauthorized("the token's subject is not a usable user id")
        return subject


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHENTICATED", message,
                    headers={"www-authenticate": 'Bearer error="invalid_token"'})


class Identity:
    """The principal of a request (``principal``), or None for an anonymous one."""

    def __init__(self, mode: str, accounts: Accounts | None = None,
                 oidc: OidcVerifier | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"HASHREC_AUTH must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "local" and accounts is None:
            raise ValueError("local sign-in needs an accounts file")
        if mode == "oidc" and oidc is None:
            raise ValueError("oidc sign-in needs HASHREC_OIDC_ISSUER, HASHREC_OIDC_AUDIENCE "
                             "and HASHREC_OIDC_JWKS_URL")
        self.mode, self.accounts, self.oidc = mode, accounts, oidc
        if mode == "none":
            log.warning("gateway: HASHREC_AUTH=none: no sign-in, anyone may act as any user "
                        "by naming them. For benchmarks only; never expose this gateway.")

    async def principal(self, request: Request, claimed: str = "") -> str | None:
        """The user id the request acts as. ``claimed``: the request's own ``user`` field,
        believed in mode none only."""
        if self.mode == "none":
            return claimed.strip() or None
        if self.mode == "oidc":
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if not header:
                return None
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("send the token as 'Authorization: Bearer <JWT>'")
            return await asyncio.to_thread(self.oidc.subject, token.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        return await asyncio.to_thread(self.accounts.user_for, cookie)

    async def required(self, request: Request, claimed: str = "") -> str:
        """The principal, or 401: this needs someone signed in."""
        user = await self.principal(request, claimed)
        if user is None:
            if self.mode == "none":
                raise ApiError(400, "INVALID_ARGUMENT", "user: name the user (HASHREC_AUTH="
                               "none)")
            raise ApiError(401, "UNAUTHENTICATED", "sign in first: this changes or shows "
                           "your own profile", headers={"www-authenticate": "Bearer"}
                           if self.mode == "oidc" else None)
        return user
