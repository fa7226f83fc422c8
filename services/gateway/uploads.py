"""The photos signed-in people uploaded recently, by owner and the sha256 of the kept
bytes: so that "save to my profile" can name a photo recommended a moment ago instead of
sending it again, and the gallery can show it to its owner. An upload is kept only after
vision decoded it, re-encoded (shared/images.py ``reencoded``), and only for its owner:
another person asking for the same digest finds nothing. Bounded in count and in bytes;
the least recently used go first."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Upload:
    data: bytes
    content_type: str


class RecentUploads:
    def __init__(self, max_count: int = 256, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("the upload store needs room for at least one photo")
        self.max_count, self.max_bytes = max_count, max_bytes
        self._uploads: OrderedDict[tuple[str, str], Upload] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, owner: str, data: bytes, content_type: str) -> str:
        """Keeps the photo for ``owner`` (when it fits at all); returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        key = (owner, digest)
        with self._lock:
            if key in self._uploads:
                self._uploads.move_to_end(key)
                return digest
            if len(data) > self.max_bytes:
                return digest  # larger than the whole store: answered, not kept
            self._uploads[key] = Upload(bytes(data), content_type)
            self._bytes += len(data)
            while len(self._uploads) > self.max_count or self._bytes > self.max_bytes:
                _, dropped = self._uploads.popitem(last=False)
                self._bytes -= len(dropped.data)
        return digest

    def get(self, owner: str | None, digest: str) -> Upload | None:
        """The owner's upload; None for anyone else's, or one no longer kept."""
        if owner is None:
            return None
        with self._lock:
            upload = self._uploads.get((owner, digest))
            if upload is not None:
                self._uploads.move_to_end((owner, digest))
            return upload

    def remove(self, owner: str, digest: str | None = None) -> None:
        """Drops the owner's upload ``digest``, or (None) every upload of theirs."""
        with self._lock:
            for key in [key for key in self._uploads
                        if key[0] == owner and digest in (None, key[1])]:
                self._bytes -= len(self._uploads.pop(key).data)

    def __len__(self) -> int:
        return len(self._uploads)

    @property
    def bytes(self) -> int:
        return self._bytes
