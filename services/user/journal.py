"""Durable online profiles: every accepted post is appended to a journal before the
profile learns from it, and the journal is replayed onto the trained model at start.

One JSON object a line: user, hashtags (terms, so a retrained vocabulary can replay what it
still knows), the photo's CNN features as base64 float32, and an optional photo id. A line
cut short by a crash is skipped with a warning; nothing acknowledged is ever lost, because
``append`` returns only after fsync.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.user.lookup import UserHashtagLookup

log = logging.getLogger(__name__)


class UpdateJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, user: str, hashtags: Sequence[str], features: np.ndarray,
               photo_id: str = "") -> None:
        record = {"user": user, "hashtags": list(hashtags), "photo_id": photo_id,
                  "features": base64.b64encode(
                      np.asarray(features, dtype="<f4").tobytes()).decode("ascii")}
        with self.path.open("a", encoding="utf-8") as journal:
            journal.write(json.dumps(record, ensure_ascii=False) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def replay(self, lookup: UserHashtagLookup) -> int:
        """Applies every journaled post to ``lookup``; returns how many were applied."""
        if not self.path.exists():
            return 0
        applied = 0
        with self.path.open(encoding="utf-8") as journal:
            for number, line in enumerate(journal, start=1):
                try:
                    record = json.loads(line)
                    features = np.frombuffer(base64.b64decode(record["features"]), "<f4")
                except (ValueError, KeyError) as error:
                    log.warning("%s:%d: unreadable update skipped (%s)", self.path, number,
                                error)
                    continue
                ids = [lookup.hashtag_rows[t] for t in record["hashtags"]
                       if t in lookup.hashtag_rows]
                if ids:
                    lookup.update(record["user"], features, ids)
                    applied += 1
                if record.get("photo_id"):
                    lookup.add_photos([record["photo_id"]], features[None, :])
        log.info("replayed %d profile updates from %s", applied, self.path)
        return applied
