"""The gateway's configuration, from the environment (the variables are listed at the top
of services/gateway/server.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from services.gateway.accounts import Accounts
from services.gateway.identity import Identity, OidcSettings, OidcVerifier
from shared.config import data_root, models_dir

MAX_UPLOAD_BYTES = 20 * 1024 * 1024


def _listed(text: str | None, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip()) if text else default


@dataclass
class Settings:
    recommender: str = "127.0.0.1:50050"
    timeout: float = 30.0
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    photo_root: Path = field(default_factory=data_root)
    uploads: int = 256
    upload_bytes: int = 256 * 1024 * 1024
    auth: str = "local"
    #: local accounts' SQLite file; None: <models>/gateway/accounts.sqlite
    accounts_path: Path | None = None
    oidc: OidcSettings | None = None
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    cors_origins: tuple[str, ...] = ()
    secure_cookies: bool = False
    #: HASHREC_GATEWAY_RATE_LIMITS' text (None: the defaults, "off": none)
    rate_limits: str | None = None
    redis_url: str | None = None
    body_timeout: float = 60.0
    header_timeout: float = 10.0
    max_connections: int = 256
    #: the HTTP/1.1 parser: "httptools" (C) or "h11" (pure Python)
    http_parser: str = "httptools"

    @classmethod
    def from_environment(cls) -> Settings:
        env = os.environ.get
        oidc = None
        if env("HASHREC_OIDC_ISSUER"):
            oidc = OidcSettings(env("HASHREC_OIDC_ISSUER", ""), env("HASHREC_OIDC_AUDIENCE", ""),
                                env("HASHREC_OIDC_JWKS_URL", ""))
        accounts = env("HASHREC_ACCOUNTS_DB")
        return cls(env("HASHREC_RECOMMENDER_TARGET", "127.0.0.1:50050"),
                   float(env("HASHREC_GATEWAY_TIMEOUT_S", "30")),
                   int(env("HASHREC_GATEWAY_MAX_UPLOAD_BYTES", str(MAX_UPLOAD_BYTES))),
                   Path(env("HASHREC_PHOTO_ROOT") or data_root()),
                   int(env("HASHREC_GATEWAY_UPLOADS", "256")),
                   int(env("HASHREC_GATEWAY_UPLOAD_BYTES", str(256 * 1024 * 1024))),
                   env("HASHREC_AUTH", "local").strip().lower() or "local",
                   Path(accounts) if accounts else None, oidc,
                   _listed(env("HASHREC_GATEWAY_ALLOWED_HOSTS"), ("127.0.0.1", "localhost")),
                   _listed(env("HASHREC_GATEWAY_CORS_ORIGINS")),
                   env("HASHREC_GATEWAY_SECURE_COOKIES", "") == "1",
                   env("HASHREC_GATEWAY_RATE_LIMITS"), env("HASHREC_REDIS_URL") or None,
                   float(env("HASHREC_GATEWAY_BODY_TIMEOUT_S", "60")),
                   float(env("HASHREC_GATEWAY_HEADER_TIMEOUT_S", "10")),
                   int(env("HASHREC_GATEWAY_MAX_CONNECTIONS", "256")),
                   _parser(env("HASHREC_GATEWAY_HTTP", "httptools")))

    def identity(self) -> Identity:
        if self.auth == "local":
            return Identity("local", accounts=Accounts(
                self.accounts_path or models_dir() / "gateway" / "accounts.sqlite"))
        if self.auth == "oidc":
            if self.oidc is None or not all((self.oidc.issuer, self.oidc.audience,
                                             self.oidc.jwks_url)):
                raise ValueError("HASHREC_AUTH=oidc needs HASHREC_OIDC_ISSUER, "
                                 "HASHREC_OIDC_AUDIENCE and HASHREC_OIDC_JWKS_URL")
            return Identity("oidc", oidc=OidcVerifier(self.oidc))
        return Identity(self.auth)


def _parser(name: str) -> str:
    from services.gateway.guards import HTTP_PROTOCOLS

    if name not in HTTP_PROTOCOLS:
        raise ValueError(f"HASHREC_GATEWAY_HTTP={name!r}: the HTTP parser is one of "
                         f"{', '.join(HTTP_PROTOCOLS)}")
    return name
