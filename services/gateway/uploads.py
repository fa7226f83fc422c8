"""The photos people uploaded recently, by the sha256 of their bytes: so that "save to my
profile" can name a photo recommended a moment ago instead of sending it again, and the
gallery can show it. Bounded in count and in bytes; the least recently used go first."""

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
        self._uploads: OrderedDict[str, Upload] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, data: bytes, content_type: str) -> str:
        """Keeps the photo (when it fits at all); returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self._uploads:
                self._uploads.move_to_end(digest)
                return digest
            if len(data) > self.max_bytes:
                return digest  # larger than the whole store: answered, not kept
            self._uploads[digest] = Upload(bytes(data), content_type)
            self._bytes += len(data)
            while len(self._uploads) > self.max_count or self._bytes > self.max_bytes:
                _, dropped = self._uploads.popitem(last=False)
                self._bytes -= len(dropped.data)
        return digest

    def get(self, digest: str) -> Upload | None:
        with self._lock:
            upload = self._uploads.get(digest)
            if upload is not None:
                self._uploads.move_to_end(digest)
            return upload

    def __len__(self) -> int:
        return len(self._uploads)

    @property
    def bytes(self) -> int:
        return self._bytes
