"""The user service sharded by user id: which state folder a shard keeps, the marker that
binds a folder to its shard, and resharding (N shards to M) with every acknowledged update.

A shard's state folder (services/user/journal.py) holds ``shard.json``: {"index", "count"}.
A service refuses a folder marked for another shard, so a user's updates never land on a
shard that does not own them. Layout under one state root:

    one shard:      ROOT/                 (updates.jsonl, <version>/snapshots, shard.json)
    N > 1 shards:   ROOT/shard-<i>/       each the same

Why resharding loses nothing: the journal holds every acknowledged update by term
(snapshots only shorten a restart; they never cut it), so the records of each old shard,
routed by the new count and renumbered in their order, are each new shard's whole history.
A new shard starts from the trained model and replays them. The steps are ordered so a
crash at any point leaves a state that ``reshard`` finishes when run again:

1. every old folder is locked (no service may run on it);
2. each new shard's journal and marker are written to <its folder>/.reshard/ and fsync'd;
   when all are, each gets .reshard/READY (the plan);
3. in every folder, old or new, the state moves to <folder>/.before-reshard-<time>/ (kept:
   the operator deletes it), the staged one into place, and .reshard goes.

Every move stays inside one folder, so a shard's folder may be a volume of its own
(Kubernetes: each StatefulSet pod's claim, mounted side by side under ROOT for the run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from services.user.journal import decode_record, encode_record, hold_state
from shared.artifacts import fsync_directory
from shared.grpc_server import StartupError
from shared.sharding import Shard, shard_of

log = logging.getLogger(__name__)
MARKER = "shard.json"
SHARD_NAME = re.compile(r"shard-\d+")
JOURNAL = "updates.jsonl"
STAGING = ".reshard"
READY = "READY"


class ReshardError(RuntimeError):
    """The state cannot be resharded as it is; one line says why (nothing was moved)."""


def shard_folder(root: Path, shard: Shard) -> Path:
    return root if shard.count == 1 else root / f"shard-{shard.index}"


def read_marker(folder: Path) -> Shard | None:
    path = folder / MARKER
    if not path.exists():
        return None
    fields = json.loads(path.read_text())
    return Shard(int(fields["index"]), int(fields["count"]))


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def write_marker(folder: Path, shard: Shard) -> None:
    temporary = folder / (MARKER + ".tmp")
    _write_durably(temporary, json.dumps({"index": shard.index, "count": shard.count}).encode())
    os.replace(temporary, folder / MARKER)
    fsync_directory(folder)


def claim(folder: Path, shard: Shard) -> None:
    """Binds ``folder`` (a user service's state, locked by the caller) to ``shard``, or
    StartupError when it belongs to another shard or a resharding is unfinished."""
    folder.mkdir(parents=True, exist_ok=True)
    for root in (folder, folder.parent):
        if _interrupted(root) is not None:
            raise StartupError(f"{root}: a resharding was interrupted; run `hashrec "
                               f"reshard-users --state {root}` again to finish it")
    marked = read_marker(folder)
    if marked is None:
        journal = folder / JOURNAL
        if shard.count > 1 and journal.exists() and journal.stat().st_size:
            raise StartupError(f"{folder} holds the updates of an unsharded user service; "
                               f"run `hashrec reshard-users --state {folder} --to "
                               f"{shard.count}` to start it as {shard}")
        write_marker(folder, shard)
    elif marked != shard:
        raise StartupError(f"{folder} is the state of {marked}; this service was started as "
                           f"{shard}: run `hashrec reshard-users --to {shard.count}` first")


def current_layout(root: Path) -> list[tuple[Path, Shard]]:
    """The state folders under ``root`` and the shard each belongs to (an unmarked folder
    with a journal: one unsharded service's)."""
    marked = read_marker(root)
    if marked is not None or (root / JOURNAL).exists():
        return [(root, marked or Shard())]
    folders = sorted(root.glob("shard-*"), key=lambda p: p.name)
    layout = []
    for folder in folders:
        shard = read_marker(folder)
        if shard is None:
            raise ReshardError(f"{folder} has no {MARKER}: not a shard's state")
        layout.append((folder, shard))
    counts = {shard.count for _, shard in layout}
    if len(counts) > 1 or (layout and sorted(s.index for _, s in layout)
                           != list(range(layout[0][1].count))):
        raise ReshardError(f"{root}: the shard folders do not make one whole set "
                           f"({', '.join(f'{f.name}: {s}' for f, s in layout)})")
    return layout


def _routed_journals(layout: list[tuple[Path, Shard]], count: int) -> list[list[bytes]]:
    """Every old shard's records, each to the new shard owning its user, in their order
    (one user's records all come from one old shard), renumbered 1, 2, … per new shard."""
    routed: list[list[bytes]] = [[] for _ in range(count)]
    for folder, shard in layout:
        journal = folder / JOURNAL
        if not journal.exists():
            continue
        with journal.open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    record = decode_record(line, 0)
                except (ValueError, UnicodeDecodeError) as error:
                    raise ReshardError(f"{journal}:{number}: damaged record ({error}); "
                                       "nothing was moved") from None
                if not shard.owns(record.user):
                    raise ReshardError(f"{journal}:{number}: user {record.user!r} is not "
                                       f"{shard}'s; nothing was moved")
                target = routed[shard_of(record.user, count)]
                target.append(encode_record(dataclasses.replace(record,
                                                                seq=len(target) + 1)))
    return routed


def _move(source: Path, target: Path) -> None:
    """``source`` to ``target``; nothing when it moved already (a run finished again)."""
    if not source.exists():
        return
    if target.exists():
        raise ReshardError(f"{target} is in the way of {source}; nothing more was moved")
    os.replace(source, target)


def _live_entries(folder: Path, root: Path) -> list[Path]:
    """What a shard's state holds (the journal, snapshots, its marker): not the lock, the
    resharding's own folders, nor (in an unsharded root) the shard folders under it."""
    return [entry for entry in folder.iterdir()
            if entry.name not in (STAGING, ".lock")
            and not entry.name.startswith(".before-reshard")
            and not (folder == root and SHARD_NAME.fullmatch(entry.name))]


def _swap(root: Path, plan: dict) -> None:
    """Step 3 in every folder: its state to its backup (finished once DONE is written),
    the staged state into place, the staging gone. Each move is within one folder (one
    file system: a shard's folder may be a volume of its own)."""
    for name in plan["folders"]:
        folder = root / name
        backup = folder / plan["backup"]
        if not (backup / "DONE").exists():
            backup.mkdir(exist_ok=True)
            for entry in _live_entries(folder, root):
                _move(entry, backup / entry.name)
            _write_durably(backup / "DONE", b"")
            fsync_directory(folder)
        staged = folder / STAGING
        if staged.exists():
            for entry in staged.iterdir():
                if entry.name != READY:
                    _move(entry, folder / entry.name)
            fsync_directory(folder)
            shutil.rmtree(staged)
            fsync_directory(folder)


def _interrupted(root: Path) -> dict | None:
    """The plan of a resharding whose staging was complete when it stopped, if any."""
    for ready in [root / STAGING / READY, *root.glob(f"shard-*/{STAGING}/{READY}")]:
        if ready.exists():
            return json.loads(ready.read_text())
    return None


def reshard(root: Path, count: int) -> dict:
    """Moves the users of the shards under ``root`` to ``count`` shards, each with its
    acknowledged updates; returns what moved. StartupError when a service holds a
    folder, ReshardError when the state is not a whole set (nothing moves then)."""
    if count < 1:
        raise ReshardError(f"--to must be at least 1, not {count}")
    plan = _interrupted(root) if root.exists() else None
    if plan is not None:  # a run that stopped while swapping: finish it
        _swap(root, plan)
        log.info("finished the interrupted resharding %d -> %d", plan["from"], plan["to"])
        return {**plan, "resumed": True}
    layout = current_layout(root) if root.exists() else []
    locks = [hold_state(folder) for folder, _ in layout]
    try:
        started = time.perf_counter()
        journals = _routed_journals(layout, count)
        new = [shard_folder(root, Shard(index, count)) for index in range(count)]
        folders = list(dict.fromkeys([*(folder for folder, _ in layout), *new]))
        for folder in folders:  # a staging never made READY
            shutil.rmtree(folder / STAGING, ignore_errors=True)
        for index, (folder, lines) in enumerate(zip(new, journals, strict=True)):
            staged = folder / STAGING
            staged.mkdir(parents=True)
            _write_durably(staged / JOURNAL, b"".join(lines))
            write_marker(staged, Shard(index, count))
        old_count = layout[0][1].count if layout else 0
        plan = {"from": old_count, "to": count,
                "folders": [str(folder.relative_to(root)) for folder in folders],
                "backup": f".before-reshard-{time.strftime('%Y%m%d-%H%M%S')}-"
                          f"{uuid.uuid4().hex[:6]}",
                "records": [len(lines) for lines in journals]}
        for folder in new:  # every staging is whole before any says READY
            _write_durably(folder / STAGING / READY, json.dumps(plan).encode())
            fsync_directory(folder / STAGING)
        _swap(root, plan)
        plan["seconds"] = round(time.perf_counter() - started, 3)
    finally:
        for lock in locks:
            lock.release()
    log.info("resharded %d -> %d shards: %s records; the old state is in each folder's %s",
             old_count, count, plan["records"], plan["backup"])
    return plan
