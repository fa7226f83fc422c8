"""Local accounts (HASHREC_AUTH=local): a SQLite file of names, argon2 password hashes and
sessions, for the embedded deployment of `hashrec serve`.

- A name is 3 to 32 of a-z, 0-9, '.', '_', '-'; its user id is "local:<name>", so no
  account can ever be one of the simulated users (u00022 …), who have no password.
- Passwords are hashed with argon2id (argon2-cffi's defaults) and never stored.
- A session is a random id kept server side (its sha256), with an expiry; the cookie holds
  the id signed with the gateway's key (itsdangerous), so a forged or altered cookie is
  refused before the database is asked, and signing out or deleting the account ends it
  wherever it was copied.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, TimestampSigner

NAME = re.compile(r"[a-z0-9._-]{3,32}")
MIN_PASSWORD, MAX_PASSWORD = 8, 256
SESSION_SECONDS = 14 * 24 * 3600
USER_PREFIX = "local:"
SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY, name TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_name ON sessions (name);
"""


class AccountError(ValueError):
    """A sign-up or sign-in refused; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def user_id_of(name: str) -> str:
    return USER_PREFIX + name


def session_key(directory: Path) -> bytes:
    """The key that signs session cookies: HASHREC_SESSION_KEY, or a random one made once
    and kept (mode 0600) beside the accounts, so sessions survive a restart."""
    configured = os.environ.get("HASHREC_SESSION_KEY")
    if configured:
        return configured.encode()
    path = directory / "session.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32).encode()
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes()
        with os.fdopen(descriptor, "wb") as file:
            file.write(key)
        return key


class Accounts:
    def __init__(self, path: Path, session_seconds: int = SESSION_SECONDS,
                 key: bytes | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.session_seconds = path, session_seconds
        self._signer = TimestampSigner(key or session_key(path.parent), salt="hashrec-session")
        self._hasher = PasswordHasher()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        # a hash to verify against when the name is unknown: the same time either way
        self._absent = self._hasher.hash(secrets.token_hex(16))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def checked(name: str, password: str) -> str:
        name = name.strip().lower()
        if not NAME.fullmatch(name):
            raise AccountError(400, "name: 3 to 32 characters of a-z, 0-9, '.', '_' or '-'")
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise AccountError(400, f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        return name

    def sign_up(self, name: str, password: str) -> tuple[str, str]:
        """A new account, signed in: (its user id, the session cookie)."""
        name = self.checked(name, password)
        digest = self._hasher.hash(password)
        try:
            with self._lock, self._db:
                self._db.execute("INSERT INTO accounts VALUES (?, ?, ?)",
                                 (name, digest, time.time()))
        except sqlite3.IntegrityError:
            raise AccountError(409, f"the name {name!r} is taken") from None
        return user_id_of(name), self._new_session(name)

    def sign_in(self, name: str, password: str) -> tuple[str, str]:
        """(user id, session cookie); AccountError 401 for a wrong name or password (the
        same message and time for both)."""
        name = name.strip().lower()
        with self._lock:
            row = self._db.execute("SELECT password_hash FROM accounts WHERE name = ?",
                                   (name,)).fetchone()
        try:
            self._hasher.verify(row[0] if row else self._absent, password)
        except (VerificationError, InvalidHashError):
            row = None
        if row is None:
            raise AccountError(401, "wrong name or password")
        return user_id_of(name), self._new_session(name)

    def _new_session(self, name: str) -> str:
        session = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock, self._db:
            self._db.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            self._db.execute("INSERT INTO sessions VALUES (?, ?, ?)",
                             (_hashed(session), name, now + self.session_seconds))
        return self._signer.sign(session).decode()

    def user_for(self, cookie: str) -> str | None:
        """The signed-in user's id, or None for no, a forged, or an expired session."""
        try:
            session = self._signer.unsign(cookie, max_age=self.session_seconds).decode()
        except BadSignature:  # also SignatureExpired
            return None
        with self._lock:
            row = self._db.execute("SELECT name FROM sessions WHERE id_hash = ? AND "
                                   "expires >= ?", (_hashed(session), time.time())).fetchone()
        return user_id_of(row[0]) if row else None

    def sign_out(self, cookie: str) -> None:
        try:
            session = self._signer.unsign(cookie).decode()
        except BadSignature:
            return
        with self._lock, self._db:
            self._db.execute("DELETE FROM sessions WHERE id_hash = ?", (_hashed(session),))

    def delete(self, user_id: str) -> None:
        """The account and every session of it."""
        name = user_id.removeprefix(USER_PREFIX)
        with self._lock, self._db:
            self._db.execute("DELETE FROM sessions WHERE name = ?", (name,))
            self._db.execute("DELETE FROM accounts WHERE name = ?", (name,))


def _hashed(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()
