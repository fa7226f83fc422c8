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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from services.user.journal import (
    JOURNAL_FILE,
    JournalRecord,
    decode_record,
    encode_record,
    hold_state,
    repair_tail,
    write_snapshot,
)
from services.user.profiles import ROW, SparseProfiles
from shared.artifacts import ArtifactReader, fsync_directory
from shared.grpc_server import StartupError
from shared.sharding import MAX_SHARDS, Shard, shard_of

log = logging.getLogger(__name__)
MARKER = "shard.json"
SHARD_NAME = re.compile(r"shard-\d+")
STAGING = ".reshard"
READY = "READY"


ROW_OF_NOBODY = np.zeros(0, ROW)


class ReshardError(RuntimeError):
    """The state cannot be resharded as it is; one line says why (nothing was moved)."""


def shard_folder(root: Path, shard: Shard) -> Path:
    return root if shard.count == 1 else root / f"shard-{shard.index}"


def read_marker(folder: Path) -> Shard | None:
    """The shard ``folder`` is bound to; None when unbound; ValueError naming the file when
    the marker is damaged."""
    path = folder / MARKER
    if not path.exists():
        return None
    try:
        fields = json.loads(path.read_text())
        return Shard(int(fields["index"]), int(fields["count"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error}); it should "
                         'hold {"index": I, "count": N}') from None


def shard_folders(root: Path) -> list[Path]:
    """ROOT/shard-<i> folders, in shard order."""
    return sorted((p for p in root.glob("shard-*") if SHARD_NAME.fullmatch(p.name)
                   and p.is_dir()), key=lambda p: int(p.name.removeprefix("shard-")))


def holds_state(folder: Path) -> bool:
    """Whether ``folder`` holds updates: a journal with records, or a snapshot."""
    journal = folder / JOURNAL_FILE
    return (journal.exists() and journal.stat().st_size > 0) or any(
        folder.glob("[!.]*/snapshots/[0-9]*"))


def state_root(folder: Path, shard: Shard) -> Path:
    """The state root a shard's folder belongs to (the folder itself in a pod's volume)."""
    return folder.parent if shard.count > 1 and SHARD_NAME.fullmatch(folder.name) else folder


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
    try:
        marked = read_marker(folder)
        root = state_root(folder, shard)
        hint = f"`hashrec reshard-users --state {root} --to {shard.count}`"
        if shard.count == 1:  # an unsharded service over a sharded state sees nobody
            for sharded in shard_folders(folder):
                other = read_marker(sharded)
                if other is not None:
                    raise StartupError(
                        f"{folder} holds the state of {other.count} shards ({sharded.name} "
                        f"…): serve it with --user-shards {other.count}, or run {hint}")
        elif root != folder:  # one of several shard folders under one root
            if read_marker(root) is not None or holds_state(root):
                raise StartupError(f"{root} holds an unsharded user service's state: run "
                                   f"{hint} to serve it as {shard.count} shards")
            for sibling in shard_folders(root):
                other = read_marker(sibling)
                if other is not None and other.count != shard.count:
                    raise StartupError(f"{root} holds the state of {other.count} shards "
                                       f"({sibling.name} is {other}); this service was "
                                       f"started as {shard}: run {hint} first")
    except ValueError as error:
        raise StartupError(str(error)) from None
    if marked is None:
        if shard.count > 1 and holds_state(folder):
            raise StartupError(f"{folder} holds the updates of an unsharded user service; "
                               f"run `hashrec reshard-users --state {folder} --to "
                               f"{shard.count}` to start it as {shard}")
        write_marker(folder, shard)
    elif marked != shard:
        raise StartupError(f"{folder} is the state of {marked}; this service was started as "
                           f"{shard}: run {hint} first")


def current_layout(root: Path) -> list[tuple[Path, Shard]]:
    """The state folders under ``root`` and the shard each belongs to (an unmarked folder
    with a journal: one unsharded service's). A shard folder a shrinking emptied (backups
    alone) is passed over."""
    if not root.is_dir():
        raise ReshardError(f"no user service state at {root} (HASHREC_USER_STATE, --state)")
    layout = []
    for folder in shard_folders(root):
        shard = read_marker(folder)
        if shard is not None:
            layout.append((folder, shard))
        elif holds_state(folder):
            raise ReshardError(f"{folder} holds updates but no {MARKER}: not a shard's state")
    marked = read_marker(root)
    if marked is not None or (root / JOURNAL_FILE).exists():
        if layout:
            raise ReshardError(f"{root} holds both an unsharded service's state and shard "
                               "folders; move the one not in use aside")
        layout = [(root, marked or Shard())]
    if not layout:
        raise ReshardError(f"{root} holds no user service state (no {MARKER}, {JOURNAL_FILE} "
                           "or shard-<i>/ folders)")
    for folder, _ in layout:
        if any(folder.glob(f"[!.]*/{JOURNAL_FILE}")):
            raise ReshardError(f"{folder} has a journal of an older layout (<version>/"
                               f"{JOURNAL_FILE}): start its user service once (it adopts it) "
                               "and stop it, then reshard")
    counts = {shard.count for _, shard in layout}
    if len(counts) > 1 or (layout and sorted(s.index for _, s in layout)
                           != list(range(layout[0][1].count))):
        raise ReshardError(f"{root}: the shard folders do not make one whole set "
                           f"({', '.join(f'{f.name}: {s}' for f, s in layout)})")
    return layout


def _records(folder: Path, shard: Shard) -> Iterator[JournalRecord]:
    """An old shard's records, checked: ReshardError on a damaged one or one of a user
    the shard does not own (nothing was moved then)."""
    journal = folder / JOURNAL_FILE
    if not journal.exists():
        return
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
            yield record


def _route_journals(layout: list[tuple[Path, Shard]], staged: list[Path],
                    covered: dict[Path, int]) -> tuple[list[int], list[int]]:
    """Writes every old shard's records, each to the staged journal of the new shard
    owning its user, in their order (one user's records all come from one old shard),
    renumbered 1, 2, … per new shard, a record at a time (a journal can be far larger
    than memory). First the records an old snapshot holds (``covered``: each old
    folder's snapshot seq) from every old shard, then the rest, so that a new snapshot
    holds exactly its journal's first records. Returns (records, covered records) a new
    shard."""
    count = len(staged)
    written, firsts = [0] * count, [0] * count
    files = [(folder / JOURNAL_FILE).open("wb") for folder in staged]
    try:
        for covered_pass in (True, False):
            for folder, shard in layout:
                limit = covered.get(folder, 0)
                for record in _records(folder, shard):
                    if (record.seq <= limit) != covered_pass:
                        continue
                    target = shard_of(record.user, count)
                    written[target] += 1
                    files[target].write(encode_record(dataclasses.replace(
                        record, seq=written[target])))
            if covered_pass:
                firsts = list(written)
        for file in files:
            file.flush()
            os.fsync(file.fileno())
    finally:
        for file in files:
            file.close()
    return written, firsts


def _newest_snapshots(layout: list[tuple[Path, Shard]],
                      ) -> tuple[str | None, dict[Path, Path]]:
    """The newest model version with a snapshot in some old folder, and each folder's
    newest snapshot of it. Snapshots of older versions are not carried over (a rollback
    to one replays the journal, as for any version without a snapshot)."""
    found = [p for folder, _ in layout for p in folder.glob("*/snapshots/[0-9]*")
             if p.is_dir()]
    if not found:
        return None, {}
    version = max(p.parent.parent.name for p in found)
    newest = {}
    for folder, _ in layout:
        mine = sorted(folder.glob(f"{version}/snapshots/[0-9]*"))
        if mine:
            newest[folder] = mine[-1]
    return version, newest


def _split_snapshots(layout: list[tuple[Path, Shard]], snapshots: dict[Path, Path],
                     count: int) -> list[tuple[dict, dict]] | None:
    """Each new shard's profiles from the old shards' snapshots: a trained user's rows
    from the shard that owned them (any other still holds the trained rows), every other
    user's from their old shard, with their uploads, request ids and communities. None
    when a snapshot predates ``trained_users`` (then the journals alone rebuild)."""
    read = {}
    for folder, shard in layout:
        if folder in snapshots:
            reader = ArtifactReader(snapshots[folder])
            lists = reader.json("lists")
            if "trained_users" not in lists:
                log.warning("%s: written before snapshots said which users were trained; "
                            "the new shards replay their journals instead", snapshots[folder])
                return None
            arrays = {name: reader.array(name) for name in reader.arrays()}
            if "profile_bounds" not in arrays:  # dense rows, from before they were sparse
                arrays.update(SparseProfiles.from_dense(
                    arrays["hashtag_counts"], arrays.get("expected_uses")).arrays())
            read[shard.index] = (arrays, lists)
    if not read:
        return None
    old_count = layout[0][1].count
    any_arrays, any_lists = next(iter(read.values()))
    n_hashtags = int(any_arrays["profile_ids"].max(initial=0)) + 1
    trained = any_lists["trained_users"]
    profiles = {index: SparseProfiles.from_arrays(n_hashtags, arrays)
                for index, (arrays, _) in read.items()}

    def trained_row(row: int, index: int) -> tuple[int | None, str]:
        """(the snapshot new shard ``index`` takes trained row ``row`` from, or None: the
        model's own trained row; the user id). Only the user's new owner takes their
        updated row, from their old owner (a row copied elsewhere would outlive a
        Forget, and count twice if taken back later)."""
        names = {source: lists["users"][row] for source, (_, lists) in read.items()}
        user = next((name for name in names.values() if name), "")
        if not user:  # forgotten by their owner, the only shard with a snapshot
            return next(iter(names)), ""
        owner = shard_of(user, old_count)
        if shard_of(user, count) != index or owner not in read:
            return None, user
        return owner, names[owner]  # "" where the owner forgot them

    parts = []
    for index in range(count):
        picks = [trained_row(row, index) for row in range(trained)]
        users = [user for _, user in picks]
        rows = [(source, row) for row, (source, _) in enumerate(picks)]
        for source, (_, lists) in read.items():
            for row in range(trained, len(lists["users"])):
                user = lists["users"][row]
                if user and shard_of(user, count) == index:
                    users.append(user)
                    rows.append((source, row))
        mine = {user for user in users if user and shard_of(user, count) == index}
        part = SparseProfiles(n_hashtags)
        part.rows = [profiles[source].rows[row] if source is not None else ROW_OF_NOBODY
                     for source, row in rows]
        width = any_arrays["user_vectors"].shape[1]
        # post count -1: "the model's trained row" (restore_profiles keeps its own)
        arrays = {"user_vectors": np.stack([read[s][0]["user_vectors"][r] if s is not None
                                            else np.zeros(width, np.float32)
                                            for s, r in rows]),
                  "post_counts": np.array([read[s][0]["post_counts"][r] if s is not None
                                           else -1.0 for s, r in rows]),
                  **part.arrays()}
        owners, features, requests, communities = {}, {}, [], {}
        for source, (old_arrays, lists) in read.items():
            added = {photo: row for row, photo in enumerate(lists["added_photo_ids"])}
            for photo, holders in lists.get("photo_owners", {}).items():
                kept = [user for user in holders if user in mine]
                if kept:  # a trained photo someone uploaded too: owned, no features kept
                    owners.setdefault(photo, []).extend(kept)
                    if photo in added:
                        features[photo] = old_arrays["added_photo_features"][added[photo]]
            requests += [entry for entry in lists.get("requests", []) if entry[0] in mine]
            for user, posts in lists.get("communities", {}).items():
                if user in mine and (user not in communities
                                     or shard_of(user, old_count) == source):
                    communities[user] = posts
        photo_ids = list(features)
        arrays["added_photo_features"] = np.stack([features[p] for p in photo_ids]) \
            if photo_ids else np.zeros((0, any_arrays["added_photo_features"].shape[1]),
                                       np.float32)
        parts.append((arrays, {"users": users, "trained_users": trained,
                               "added_photo_ids": photo_ids, "photo_owners": owners,
                               "requests": requests, "communities": communities}))
    return parts


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
    """Step 3: first every folder's state to its backup (a folder is done once its DONE
    is written), then every staged state into place, and only then the stagings (and
    their READY) go, so a run stopped anywhere leaves a READY for the next to finish
    from. Each move is within one folder (one file system: a shard's folder may be a
    volume of its own)."""
    folders = [root / name for name in plan["folders"]]
    for folder in folders:
        backup = folder / plan["backup"]
        if not (backup / "DONE").exists():
            backup.mkdir(exist_ok=True)
            for entry in _live_entries(folder, root):
                _move(entry, backup / entry.name)
            _write_durably(backup / "DONE", b"")
            fsync_directory(folder)
    for folder in folders:
        staged = folder / STAGING
        if staged.exists():
            for entry in staged.iterdir():
                if entry.name != READY:
                    _move(entry, folder / entry.name)
            fsync_directory(folder)
    for folder in folders:
        if (folder / STAGING).exists():
            shutil.rmtree(folder / STAGING)
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
    if not 1 <= count <= MAX_SHARDS:
        raise ReshardError(f"--to must be 1 to {MAX_SHARDS}, not {count}")
    plan = _interrupted(root) if root.is_dir() else None
    if plan is not None:  # a run that stopped while swapping: finish it
        if plan["to"] != count:
            raise ReshardError(f"{root}: a resharding {plan['from']} -> {plan['to']} was "
                               f"interrupted; finish it first (--to {plan['to']})")
        _swap(root, plan)
        log.info("finished the interrupted resharding %d -> %d", plan["from"], plan["to"])
        return {**plan, "resumed": True}
    for folder in [root, *shard_folders(root)] if root.is_dir() else []:
        shutil.rmtree(folder / STAGING, ignore_errors=True)  # a staging never made READY
    try:
        layout = current_layout(root)
    except ValueError as error:  # a damaged marker
        raise ReshardError(str(error)) from None
    new = [shard_folder(root, Shard(index, count)) for index in range(count)]
    if any(os.path.ismount(folder) for folder, _ in layout):  # each shard a volume
        unmounted = [folder.name for folder in new if not os.path.ismount(folder)]
        if unmounted:
            raise ReshardError(f"the old shards are volumes of their own but "
                               f"{', '.join(unmounted)} under {root} is not: mount each "
                               "new shard's volume first "
                               "(else its users would be written to this machine's disk)")
    locks = [hold_state(folder) for folder, _ in layout]
    try:
        for folder, _ in layout:  # a write the service did not finish, as it would cut it
            repair_tail(folder / JOURNAL_FILE)
        started = time.perf_counter()
        version, snapshots = _newest_snapshots(layout)
        parts = _split_snapshots(layout, snapshots, count) if snapshots else None
        covered = {folder: int(ArtifactReader(path).manifest["seq"])
                   for folder, path in snapshots.items()} if parts else {}
        folders = list(dict.fromkeys([*(folder for folder, _ in layout), *new]))
        stagings = [folder / STAGING for folder in new]
        for staged in stagings:
            staged.mkdir(parents=True)
            fsync_directory(staged.parent)  # its name, before any READY names it
        fsync_directory(root)  # the new shard folders' names
        written, firsts = _route_journals(layout, stagings, covered)
        for index, staged in enumerate(stagings):
            write_marker(staged, Shard(index, count))
            if parts is not None:  # the users' profiles as of the journal's first records
                write_snapshot(staged / version / "snapshots" / f"{firsts[index]:012d}",
                               firsts[index], *parts[index])
        old_count = layout[0][1].count
        plan = {"from": old_count, "to": count,
                "folders": [str(folder.relative_to(root)) for folder in folders],
                "backup": f".before-reshard-{time.strftime('%Y%m%d-%H%M%S')}-"
                          f"{uuid.uuid4().hex[:6]}",
                "records": written,
                "snapshot_users": None if parts is None else [len(p[1]["users"]) for p in parts]}
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
