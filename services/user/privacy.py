"""What a person may see and take back: an upload belongs to who posted it, retrieval
shows a caller the training photos and their own uploads only, and a repeated request is
answered once.

``PhotoOwners``: for each photo added after training, the users who posted it (the same
bytes posted by two people belong to both; each sees it until they take it back). A
photo nobody owns any more stays in the in-memory index but is shown to nobody, and the
next snapshot leaves its features out.

``RequestLog``: the answers to the last ``limit`` updates that came with a request id,
by (user, request id): a retry of an update that was applied but whose answer was lost
gets the first answer back instead of counting the post twice. It is part of the
snapshot and every journal record carries its entry, so the memory survives restarts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

#: request ids remembered (their answers are small: a few hashtags and two numbers)
REQUEST_MEMORY = 100_000


class PhotoOwners:
    def __init__(self) -> None:
        self._owners: dict[str, list[str]] = {}  # photo → its owners, first poster first
        self._photos: dict[str, list[str]] = {}  # user → their photos, oldest first

    def add(self, photo: str, user: str) -> None:
        owners = self._owners.setdefault(photo, [])
        if user not in owners:
            owners.append(user)
            self._photos.setdefault(user, []).append(photo)

    def photos_of(self, user: str) -> list[str]:
        return list(self._photos.get(user, ()))

    def owned(self, photo: str) -> bool:
        return bool(self._owners.get(photo))

    def release(self, user: str, photo: str | None = None) -> list[str]:
        """Takes ``photo`` (None: every photo) out of ``user``'s; returns those released."""
        mine = self._photos.get(user, [])
        released = [p for p in mine if photo is None or p == photo]
        for taken in released:
            self._owners[taken].remove(user)
        rest = [p for p in mine if p not in released]
        if rest:
            self._photos[user] = rest
        else:
            self._photos.pop(user, None)
        return released

    def hidden_from(self, user: str | None) -> list[str]:
        """The uploads ``user`` may not see: everyone else's, and those nobody owns."""
        return [photo for photo, owners in self._owners.items() if user not in owners]

    def state(self) -> dict[str, list[str]]:
        return {photo: list(owners) for photo, owners in self._owners.items() if owners}

    def restore(self, state: dict[str, list[str]]) -> None:
        self._owners, self._photos = {}, {}
        for photo, owners in state.items():
            for user in owners:
                self.add(photo, user)


class RequestLog:
    def __init__(self, limit: int = REQUEST_MEMORY) -> None:
        self.limit = limit
        self._answers: OrderedDict[tuple[str, str], dict] = OrderedDict()

    def get(self, user: str, request_id: str) -> dict | None:
        return self._answers.get((user, request_id)) if request_id else None

    def put(self, user: str, request_id: str, answer: dict) -> None:
        if not request_id:
            return
        self._answers[(user, request_id)] = answer
        self._answers.move_to_end((user, request_id))
        while len(self._answers) > self.limit:
            self._answers.popitem(last=False)

    def forget(self, user: str) -> None:
        for key in [key for key in self._answers if key[0] == user]:
            del self._answers[key]

    def state(self) -> list[list]:
        return [[user, request, answer] for (user, request), answer in self._answers.items()]

    def restore(self, state: Iterable[list]) -> None:
        self._answers.clear()
        for user, request, answer in state:
            self.put(user, request, answer)
