"""Which user-service shard owns a user: jump consistent hashing of the user id.

Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014): a key's
bucket among n, such that going from n to n + 1 buckets moves only 1/(n + 1) of the keys,
each to the new bucket. The user id is hashed to 64 bits with BLAKE2b first (Python's
own hash() differs between processes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_MASK = (1 << 64) - 1
#: the most user-service shards (a folder and a process each): a count past it is a typo
MAX_SHARDS = 1024


def jump_hash(key: int, buckets: int) -> int:
    """The bucket in [0, buckets) of a 64-bit key (the paper's reference loop)."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * 2862933555777941757 + 1) & _MASK
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def user_key(user_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest(),
                          "little")


def shard_of(user_id: str, shards: int) -> int:
    """The shard among ``shards`` that owns ``user_id``."""
    return jump_hash(user_key(user_id), shards)


@dataclass(frozen=True)
class Shard:
    """This process's place: shard ``index`` of ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: the count must be 1 to "
                             f"{MAX_SHARDS} and the index in 0..count - 1")

    def owns(self, user_id: str) -> bool:
        return self.count == 1 or shard_of(user_id, self.count) == self.index

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


#: the whole of the users: an unsharded service
UNSHARDED = Shard()
