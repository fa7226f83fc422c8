"""Local accounts (services/gateway/accounts.py) on a real SQLite file."""

from __future__ import annotations

import time
from pathlib import Path

from services.gateway.accounts import Accounts


def test_a_session_ends_at_its_expiry(tmp_path: Path) -> None:
    """Both the signed cookie's age and the server-side row bound it (either alone
    would: a mutation removing one survives this test, one removing both does not)."""
    accounts = Accounts(tmp_path / "accounts.sqlite", session_seconds=1, key=b"k" * 32)
    user, cookie = accounts.sign_up("ann", "a long password")
    assert accounts.user_for(cookie) == user
    time.sleep(2.1)
    assert accounts.user_for(cookie) is None
    accounts.close()
