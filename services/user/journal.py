"""Durable online profiles: every accepted post is appended to a journal before the
profile learns from it; the newest snapshot of the profiles plus the journal's newer
records rebuild them at start.

The state folder (HASHREC_USER_STATE) holds one journal for every model version, and each
version's snapshots in a folder of its own:

    updates.jsonl            one record a line: "<crc32 hex> <json>\\n", the JSON holding
                             seq (1, 2, …), user, hashtags (terms, not rows, and the ones
                             outside the serving vocabulary too: a retrained vocabulary
                             replays what it knows), the photo's CNN features as base64
                             float32, an optional photo id, and with a request id the
                             answer given (services/user/privacy.py). A "forget" record
                             takes back one upload (photo id) or everything of the user's.
    <version>/snapshots/<seq>/   that version's profiles after every record up to seq
                             (UserHashtagLookup.profiles), as checksummed arrays

The journal outlives model versions: a new version, with no snapshot of its own, starts
from its training counts and replays every record by term, so no acknowledged update is
lost to an upgrade. Snapshots only shorten a restart (records up to their seq are
skipped); they never cut the journal. Forgetting rewrites the journal without the records
taken back.

Why nothing acknowledged is lost:
- ``append`` returns only after fsync; a write or fsync that fails is cut back off the file
  (the caller answers an error and never acknowledges);
- a crash mid-write leaves a partial last line: opening the journal truncates it, so the
  next record starts on a line of its own (a record glued to a torn one would be lost);
  the CRC catches a line that is complete but damaged;
- a snapshot is written under a temporary name, fsync'd, then renamed into place: a crash
  leaves either no new snapshot or a whole one, and ``recover`` skips every record the
  snapshot already holds (seq ≤ the snapshot's), so none is applied twice;
- a rewrite (forgetting) goes to a temporary file, fsync'd, renamed over the journal.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.user.lookup import UserHashtagLookup
from shared.artifacts import ArtifactReader, ArtifactWriter, fsync_directory
from shared.grpc_server import StartupError

log = logging.getLogger(__name__)

SNAPSHOT_KIND = "user-profiles"
#: the journal's name in a state folder (each model version's snapshots beside it)
JOURNAL_FILE = "updates.jsonl"
#: a framed record's seq, read without decoding the rest of the line
SEQ_PREFIX = re.compile(rb'[0-9a-f]{8} \{"seq": (\d+),')


class JournalError(OSError):
    """An update could not be made durable; it was not recorded and must not be
    acknowledged."""


@dataclass(frozen=True)
class JournalRecord:
    seq: int
    user: str
    hashtags: tuple[str, ...]
    features: np.ndarray
    photo_id: str = ""
    #: "post", or "forget" (the user's upload photo_id, or everything when it is empty)
    kind: str = "post"
    request_id: str = ""
    answer: dict | None = None
    #: the post's community mix (name → weight), counted in the user's communities
    communities: dict | None = None


def encode_record(record: JournalRecord) -> bytes:
    fields = {"seq": record.seq, "user": record.user,
              "hashtags": list(record.hashtags), "photo_id": record.photo_id,
              "features": base64.b64encode(np.asarray(record.features, dtype="<f4")
                                           .tobytes()).decode("ascii")}
    if record.kind != "post":
        fields["kind"] = record.kind
    if record.request_id:
        fields["request_id"], fields["answer"] = record.request_id, record.answer
    if record.communities:
        fields["communities"] = record.communities
    body = json.dumps(fields, ensure_ascii=False).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_record(line: bytes, fallback_seq: int) -> JournalRecord:
    """One journal line; ValueError when it is damaged. Lines written before records were
    framed (a bare JSON object) take ``fallback_seq``."""
    line = line.rstrip(b"\n")
    if line.startswith(b"{"):
        body = line
    else:
        checksum, _, body = line.partition(b" ")
        if len(checksum) != 8 or int(checksum, 16) != zlib.crc32(body):
            raise ValueError("checksum does not match")
    record = json.loads(body)
    try:
        return JournalRecord(int(record.get("seq", fallback_seq)), record["user"],
                             tuple(record["hashtags"]),
                             np.frombuffer(base64.b64decode(record["features"]), "<f4"),
                             record.get("photo_id", ""), record.get("kind", "post"),
                             record.get("request_id", ""), record.get("answer"),
                             record.get("communities"))
    except KeyError as missing:
        raise ValueError(f"field {missing} is missing") from None


def write_snapshot(folder: Path, seq: int, arrays: dict[str, np.ndarray],
                   lists: dict) -> Path:
    """Profiles (UserHashtagLookup.profiles' arrays and lists) as of update ``seq``, as a
    checksummed artifact in ``folder``, made durable; a folder left there before goes."""
    shutil.rmtree(folder, ignore_errors=True)
    writer = ArtifactWriter(folder)
    for name, array in arrays.items():
        writer.array(name, array)
    writer.json("lists", lists)
    writer.close({"kind": SNAPSHOT_KIND, "seq": seq}, durable=True)
    return folder


def repair_tail(path: Path) -> None:
    """Cuts a partial last line (a write the process did not finish) off the journal."""
    if not path.exists():
        return
    with path.open("rb+") as journal:
        size = journal.seek(0, os.SEEK_END)
        if size == 0:
            return
        journal.seek(size - 1)
        if journal.read(1) == b"\n":
            return
        keep = size
        while keep > 0:  # scan back for the last complete line
            start = max(0, keep - 65536)
            journal.seek(start)
            block = journal.read(keep - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        journal.truncate(keep)
        journal.flush()
        os.fsync(journal.fileno())
    log.warning("%s: cut %d bytes of a record the process did not finish writing",
                path, size - keep)


class UpdateJournal:
    def __init__(self, directory: Path) -> None:
        """``directory``: this model version's folder inside the state folder."""
        self.directory = directory
        self.path = directory.parent / JOURNAL_FILE  # every version's
        self.snapshots = directory / "snapshots"
        directory.mkdir(parents=True, exist_ok=True)
        self._adopt_legacy_journal()
        #: seq of the last record written (or held by the newest snapshot)
        self.last_seq = 0
        self.since_snapshot = 0
        self._repair_tail()

    def _adopt_legacy_journal(self) -> None:
        """State written before the journal was shared kept one journal a version, beside
        its snapshots, whose seqs continue that version's snapshot: the first start after
        the upgrade takes it over as the shared journal, so no record in it is lost."""
        legacy = self.directory / JOURNAL_FILE
        if not legacy.exists():
            return
        if self.path.exists() and self.path.stat().st_size > 0:
            log.warning("%s: a journal of the old layout beside the shared one %s; its "
                        "records are not replayed (append them to it by hand)", legacy,
                        self.path)
            return
        os.replace(legacy, self.path)
        fsync_directory(self.path.parent)
        log.info("adopted %s as the shared journal %s", legacy, self.path)

    def _repair_tail(self) -> None:
        repair_tail(self.path)

    def append(self, user: str, hashtags: Sequence[str], features: np.ndarray,
               photo_id: str = "", kind: str = "post", request_id: str = "",
               answer: dict | None = None, communities: dict | None = None) -> int:
        """Writes and fsyncs one record; returns its seq. JournalError when the record
        could not be made durable (the file is cut back to what it was)."""
        seq = self.last_seq + 1
        line = encode_record(JournalRecord(seq, user, tuple(hashtags), features, photo_id,
                                           kind, request_id, answer, communities))
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise JournalError(error.errno, f"cannot open the update journal "
                               f"{self.path}: {error.strerror}") from error
        try:
            size = os.lseek(descriptor, 0, os.SEEK_END)
            try:
                written = 0
                while written < len(line):
                    written += os.write(descriptor, line[written:])
                os.fsync(descriptor)
            except OSError as error:
                with contextlib.suppress(OSError):  # else the next open cuts the line
                    os.ftruncate(descriptor, size)
                raise JournalError(error.errno, f"cannot write the update journal "
                                   f"{self.path}: {error.strerror}") from error
        finally:
            os.close(descriptor)
        self.last_seq = seq
        self.since_snapshot += 1
        return seq

    def records(self, after: int = 0) -> Iterator[JournalRecord]:
        """Every readable record, in order; damaged lines are logged and skipped. Records
        up to seq ``after`` (a snapshot holds them) are passed over from their seq alone,
        without decoding their features: the journal keeps every version's records, and a
        restart should cost what the snapshot left, not the journal's whole length."""
        if not self.path.exists():
            return
        seq = self.last_seq
        with self.path.open("rb") as journal:
            for number, line in enumerate(journal, start=1):
                head = SEQ_PREFIX.match(line)
                if head is not None and int(head[1]) <= after:
                    seq = int(head[1])
                    continue
                try:
                    record = decode_record(line, seq + 1)
                except (ValueError, UnicodeDecodeError) as error:
                    log.error("%s:%d: damaged update record skipped (%s)", self.path,
                              number, error)
                    continue
                seq = record.seq
                yield record

    def recover(self, lookup: UserHashtagLookup) -> int:
        """Restores the newest snapshot onto ``lookup`` (the trained model it was taken
        from), then applies every newer record; returns how many records were applied."""
        for stale in self.snapshots.glob(".tmp-*"):  # a snapshot a crash left unfinished
            shutil.rmtree(stale, ignore_errors=True)
        snapshot = self.newest_snapshot()
        if snapshot is not None:
            reader = ArtifactReader(snapshot)  # refuses a damaged snapshot
            lists = reader.json("lists")
            lookup.restore_profiles({name: reader.array(name) for name in reader.arrays()},
                                    lists)
            self.last_seq = int(reader.manifest["seq"])
            log.info("restored %d users' profiles from %s", len(lists["users"]), snapshot)
        applied = 0
        for record in self.records(after=self.last_seq):
            if record.seq <= self.last_seq:
                continue  # already in the snapshot
            self.last_seq = record.seq
            self.since_snapshot += 1
            if apply_record(lookup, record):
                applied += 1
        log.info("replayed %d profile updates from %s", applied, self.path)
        return applied

    def forget(self, user: str, photo: str | None = None) -> int:
        """Rewrites the journal without ``user``'s posts (only the one of ``photo`` when
        given): their features and hashtags leave the disk. Forget records stay, so a
        replay from an older snapshot still takes the user's rows back. Returns how many
        records went. Call from the one writer."""
        if not self.path.exists():
            return 0
        temporary = self.path.with_name(".updates.jsonl.tmp")
        dropped = 0
        with self.path.open("rb") as journal, temporary.open("wb") as kept:
            for line in journal:
                try:
                    record = decode_record(line, 0)
                except (ValueError, UnicodeDecodeError):
                    kept.write(line)  # not ours to judge here: recover logs it
                    continue
                if record.user == user and record.kind == "post" and (
                        photo is None or record.photo_id == photo):
                    dropped += 1
                    continue
                kept.write(line)
            kept.flush()
            os.fsync(kept.fileno())
        os.replace(temporary, self.path)
        fsync_directory(self.path.parent)
        return dropped

    def newest_snapshot(self) -> Path | None:
        done = sorted(p for p in self.snapshots.glob("[0-9]*") if p.is_dir())
        return done[-1] if done else None

    def snapshot(self, lookup: UserHashtagLookup) -> Path:
        """Writes the profiles as of the last appended record, atomically; older
        snapshots go. Call between appends (from the one writer)."""
        arrays, lists = lookup.profiles()
        seq = self.last_seq
        final = self.snapshots / f"{seq:012d}"
        temporary = write_snapshot(self.snapshots / f".tmp-{seq:012d}", seq, arrays, lists)
        if final.exists():  # a snapshot of the same seq: nothing new since
            shutil.rmtree(temporary)
        else:
            os.replace(temporary, final)
            fsync_directory(self.snapshots)
        self.since_snapshot = 0
        for older in self.snapshots.glob("[0-9]*"):
            if older != final:
                shutil.rmtree(older, ignore_errors=True)
        log.info("snapshot of %d users' profiles at update %d: %s", len(lists["users"]),
                 seq, final)
        return final


class StateLock:
    """An exclusive lock (fcntl) on a state folder, held while a user service writes it:
    a second service on the same state refuses to start instead of interleaving records
    (two writers reuse sequence numbers, and a restart then loses updates)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / ".lock"
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise StartupError(f"{directory} is held by another user service (pid "
                               f"{holder}): one writer a journal") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def hold_state(directory: Path) -> StateLock:
    return StateLock(directory)


def apply_record(lookup: UserHashtagLookup, record: JournalRecord) -> bool:
    """Applies one journaled record; False for a post none of whose hashtags is in the
    vocabulary."""
    if record.kind == "forget":
        lookup.forget(record.user, record.photo_id or None)
        return True
    ids = [lookup.hashtag_rows[t] for t in record.hashtags if t in lookup.hashtag_rows]
    if ids:
        lookup.update(record.user, record.features, ids)
    if record.photo_id:
        lookup.add_upload(record.photo_id, record.user, record.features)
    if record.answer is not None:
        lookup.requests.put(record.user, record.request_id, record.answer)
    if record.communities:
        lookup.communities.add(record.user, record.communities)
    return bool(ids)
