"""The update journal and profile snapshots: nothing acknowledged is lost, nothing is
applied twice, across torn writes, failed writes, crashes and restarts."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from services.user.journal import JournalError, UpdateJournal, apply_record
from services.user.lookup import UserHashtagLookup
from tests.lookups import small_lookup

FEATURES = np.random.default_rng(7).normal(size=(8, 8)).astype(np.float32)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A saved lookup: each restart loads the trained model afresh, as a service does."""
    small_lookup(with_effects=True).save(tmp_path / "model")
    return tmp_path / "model"


def _restart(model_dir: Path, state: Path) -> tuple[UserHashtagLookup, UpdateJournal, int]:
    lookup = UserHashtagLookup.load(model_dir)
    journal = UpdateJournal(state)
    applied = journal.recover(lookup)
    return lookup, journal, applied


def _learn(lookup: UserHashtagLookup, journal: UpdateJournal, user: str, tag: int,
           photo: int = 0) -> None:
    """What the service does with one accepted post: journal first, then learn."""
    journal.append(user, [lookup.vocabulary[tag]], FEATURES[photo])
    lookup.update(user, FEATURES[photo], [tag])


def test_an_update_after_a_torn_write_survives_two_restarts(model_dir: Path,
                                                            tmp_path: Path) -> None:
    state = tmp_path / "state"
    lookup, journal, _ = _restart(model_dir, state)
    _learn(lookup, journal, "ann", 3)
    with journal.path.open("ab") as file:  # a crash in the middle of the next write
        file.write(b'1234abcd {"seq": 2, "user": "ann", "hasht')
    lookup, journal, applied = _restart(model_dir, state)
    assert applied == 1
    _learn(lookup, journal, "ann", 5)  # acknowledged: fsync'd after the repair
    lookup, journal, applied = _restart(model_dir, state)
    assert applied == 2
    ann = lookup.user_index["ann"]
    assert lookup.hashtag_counts[ann, 3] == small_lookup(True).hashtag_counts[0, 3] + 1
    assert lookup.hashtag_counts[ann, 5] == small_lookup(True).hashtag_counts[0, 5] + 1
    assert journal.path.read_bytes().count(b"\n") == 2


def test_a_damaged_complete_line_is_skipped_by_its_checksum(model_dir: Path,
                                                          tmp_path: Path) -> None:
    state = tmp_path / "state"
    lookup, journal, _ = _restart(model_dir, state)
    for tag in (3, 4, 5):
        _learn(lookup, journal, "bob", tag)
    lines = journal.path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"bob"', b'"bib"')  # the JSON still parses
    journal.path.write_bytes(b"".join(lines))
    lookup, _, applied = _restart(model_dir, state)
    assert applied == 2 and not lookup.known("bib")


WRITE_FAILS = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from services.user.journal import JournalError, UpdateJournal
journal = UpdateJournal(Path(sys.argv[1]))
features = np.ones(8, np.float32)
journal.append("ann", ["tag1"], features)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
size = journal.path.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, resource.RLIM_INFINITY))
try:
    journal.append("ann", ["tag2"], features)
except JournalError as error:
    print("refused:", error)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
journal.append("ann", ["tag3"], features)
"""


def test_a_write_that_fails_is_refused_and_cut_back(tmp_path: Path) -> None:
    """A real failed write (the file-size limit of a child process, as a full disk)."""
    state = tmp_path / "state"
    run = subprocess.run([sys.executable, "-c", WRITE_FAILS, str(state)], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr
    assert "refused: [Errno 27] cannot write the update journal" in run.stdout
    assert "File too large" in run.stdout
    records = list(UpdateJournal(state).records())
    assert [r.hashtags for r in records] == [("tag1",), ("tag3",)]
    assert [r.seq for r in records] == [1, 2]


def test_an_unwritable_journal_is_an_error_naming_the_file(tmp_path: Path) -> None:
    journal = UpdateJournal(tmp_path / "state")
    journal.path.mkdir()  # where the file should be, a folder: open fails
    with pytest.raises(JournalError, match=r"cannot open the update journal .*updates\.jsonl"):
        journal.append("ann", ["tag1"], np.ones(8, np.float32))
    assert journal.last_seq == 0


def test_a_snapshot_leaves_only_newer_records_to_replay(model_dir: Path,
                                                        tmp_path: Path) -> None:
    state = tmp_path / "state"
    lookup, journal, _ = _restart(model_dir, state)
    for number in range(5):
        _learn(lookup, journal, f"new{number}", number, photo=number)
    lookup.add_upload("online-photo", "new2", FEATURES[0])  # a post's photo: its poster's
    journal.snapshot(lookup)
    assert journal.path.read_bytes().count(b"\n") == 5  # a snapshot never cuts the journal
    _learn(lookup, journal, "ann", 9)
    _learn(lookup, journal, "new1", 9)
    again, journal_again, applied = _restart(model_dir, state)
    assert applied == 2 and journal_again.last_seq == 7
    users = [*lookup.user_ids, None]
    photos = FEATURES[np.arange(len(users)) % len(FEATURES)]
    np.testing.assert_allclose(again.scores(photos, users), lookup.scores(photos, users),
                               atol=1e-5)
    assert "online-photo" in again.photo_ids
    expected, _ = lookup.profiles()
    restored, _ = again.profiles()
    for name, array in expected.items():
        np.testing.assert_allclose(restored[name], array, err_msg=name)


def test_records_a_snapshot_holds_are_not_applied_twice(model_dir: Path,
                                                        tmp_path: Path) -> None:
    state = tmp_path / "state"
    lookup, journal, _ = _restart(model_dir, state)
    for tag in (1, 2, 3):
        _learn(lookup, journal, "cy", tag)
    journal.snapshot(lookup)  # the journal keeps its records
    again, _, applied = _restart(model_dir, state)
    assert applied == 0
    np.testing.assert_array_equal(again.hashtag_counts, lookup.hashtag_counts)


def test_a_new_model_version_replays_every_update_by_term_and_later_terms_wait(
        tmp_path: Path) -> None:
    """Version 1 learns online, snapshots and is replaced by version 2 (another row order
    and a term version 1 lacked): every acknowledged update reaches version 2, once, by
    term; the term version 1 could not learn was kept and version 2 learns it."""
    small_lookup(with_effects=True).save(tmp_path / "v1")
    second = small_lookup(with_effects=True)
    second.vocabulary = (*second.vocabulary[:39], "brand-new")
    second.hashtag_rows = {term: row for row, term in enumerate(second.vocabulary)}
    second.save(tmp_path / "v2")
    state = tmp_path / "state"
    first, journal = UserHashtagLookup.load(tmp_path / "v1"), UpdateJournal(state / "v1")
    journal.recover(first)
    for tag in (3, 3, 7):
        _learn(first, journal, "zed", tag)
    journal.append("zed", ["tag5", "brand-new"], FEATURES[1])  # v1 knows tag5 only
    first.update("zed", FEATURES[1], [5])
    journal.snapshot(first)
    _learn(first, journal, "ann", 9)  # after the snapshot
    upgraded, journal_v2, applied = _restart(tmp_path / "v2", state / "v2")
    assert applied == 5 and journal_v2.last_seq == 5
    zed, ann = upgraded.user_index["zed"], upgraded.user_index["ann"]
    assert upgraded.post_counts[zed] == 4
    assert upgraded.hashtag_counts[zed, 3] == 2 and upgraded.hashtag_counts[zed, 7] == 1
    assert upgraded.hashtag_counts[zed, upgraded.hashtag_rows["brand-new"]] == 1
    assert upgraded.hashtag_counts[ann, 9] == small_lookup(True).hashtag_counts[0, 9] + 1
    assert "brand-new" not in first.hashtag_rows  # version 1 could not learn it


def test_a_snapshot_cut_short_by_a_crash_is_ignored(model_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    lookup, journal, _ = _restart(model_dir, state)
    _learn(lookup, journal, "cy", 1)
    journal.snapshot(lookup)
    _learn(lookup, journal, "cy", 2)
    partial = journal.snapshots / ".tmp-000000000002"  # written, never renamed
    shutil.copytree(journal.newest_snapshot(), partial)
    (partial / "hashtag_counts.npy").write_bytes(b"\x93NUMPY")
    again, _, applied = _restart(model_dir, state)
    assert applied == 1 and not partial.exists()
    np.testing.assert_array_equal(again.hashtag_counts, lookup.hashtag_counts)


def test_a_damaged_snapshot_stops_the_start_instead_of_losing_updates(
        model_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    lookup, journal, _ = _restart(model_dir, state)
    _learn(lookup, journal, "cy", 1)
    snapshot = journal.snapshot(lookup)
    (snapshot / "post_counts.npy").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="checksum does not match"):
        _restart(model_dir, state)


WRITER = """
import sys
from pathlib import Path
import numpy as np
from services.user.journal import UpdateJournal
from services.user.lookup import UserHashtagLookup
lookup = UserHashtagLookup.load(Path(sys.argv[1]))
journal = UpdateJournal(Path(sys.argv[2]))
journal.recover(lookup)
features = np.ones(8, np.float32)
for number in range(1, 100000):
    journal.append("writer", ["tag7"], features)
    lookup.update("writer", features, [7])
    print("ack", number, flush=True)
    if number % 25 == 0:
        journal.snapshot(lookup)
"""


@pytest.mark.parametrize("kill_after", [24, 25, 49, 60])
def test_every_acknowledged_update_survives_a_kill(model_dir: Path, tmp_path: Path,
                                                   kill_after: int) -> None:
    """A real writer process, SIGKILLed once it has acknowledged ``kill_after`` updates,
    around its snapshots (every 25): the recovered profile holds every acknowledged update
    once (and at most the one in flight)."""
    state = tmp_path / "state"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(model_dir), str(state)],
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[1])
    acknowledged = 0
    deadline = time.monotonic() + 120
    while acknowledged < kill_after and time.monotonic() < deadline:
        acknowledged += writer.stdout.readline().startswith("ack ")
    writer.send_signal(signal.SIGKILL)
    output, _ = writer.communicate(timeout=30)
    acknowledged += output.count("ack ")
    assert acknowledged >= kill_after, "the writer stopped acknowledging"
    lookup, _, _ = _restart(model_dir, state)
    learned = int(lookup.hashtag_counts[lookup.user_index["writer"], 7])
    assert acknowledged <= learned <= acknowledged + 1
    assert lookup.post_counts[lookup.user_index["writer"]] == learned


def test_replay_skips_hashtags_a_retrained_vocabulary_lacks(model_dir: Path,
                                                            tmp_path: Path) -> None:
    journal = UpdateJournal(tmp_path / "state")
    journal.append("ann", ["not-a-term", "tag2"], FEATURES[0])
    journal.append("ann", ["gone"], FEATURES[0], photo_id="p1")
    lookup = UserHashtagLookup.load(model_dir)
    first, second = journal.records()
    assert apply_record(lookup, first) and not apply_record(lookup, second)
    assert "p1" in lookup.photo_ids  # the photo stays retrievable


def test_every_append_reaches_the_disk_before_it_returns(tmp_path: Path) -> None:
    """The system calls of a real writer (strace): each record's write to the journal is
    followed by an fsync of the journal before the next record, so what is acknowledged
    survives a power cut, not only a killed process (which the page cache would hide)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is missing: scripts/setup.sh installs it")
    log = tmp_path / "calls"
    writer = ("import sys; from pathlib import Path; import numpy as np; "
              "from services.user.journal import UpdateJournal; "
              "journal = UpdateJournal(Path(sys.argv[1])); "
              "[journal.append('ann', ['tag1'], np.zeros(4, np.float32)) for _ in range(3)]")
    subprocess.run([strace, "-f", "-qq", "-e", "trace=openat,write,fsync", "-o", str(log),
                    sys.executable, "-c", writer, str(tmp_path / "state" / "model")],
                   check=True, cwd=Path(__file__).parents[1], timeout=120)
    journal_fds, unsynced, synced = set(), set(), 0
    for line in log.read_text().splitlines():
        call = line.split(None, 1)[1] if line[0].isdigit() else line
        if call.startswith("openat(") and "updates.jsonl" in call and "= " in call:
            journal_fds.add(call.rsplit("= ", 1)[1].split()[0])
        elif call.startswith("write("):
            fd = call[6:].split(",", 1)[0]
            if fd in journal_fds:
                assert not unsynced, "a second record written before the first was synced"
                unsynced.add(fd)
        elif call.startswith("fsync("):
            fd = call[6:].split(")", 1)[0]
            if fd in unsynced:
                unsynced.discard(fd)
                synced += 1
    assert synced == 3 and not unsynced



def test_a_journal_written_before_it_was_shared_is_adopted_at_the_first_start(
        model_dir: Path, tmp_path: Path) -> None:
    """The previous layout kept state/<version>/updates.jsonl beside the snapshots; its
    records after the last snapshot are replayed once the journal is shared."""
    state = tmp_path / "state" / "model"
    lookup, journal, _ = _restart(model_dir, state)
    _learn(lookup, journal, "cy", 1)
    journal.snapshot(lookup)
    _learn(lookup, journal, "cy", 2)
    (tmp_path / "state" / "updates.jsonl").rename(state / "updates.jsonl")  # the old place
    again, journal_again, applied = _restart(model_dir, state)
    assert applied == 1 and journal_again.path == tmp_path / "state" / "updates.jsonl"
    np.testing.assert_array_equal(again.hashtag_counts, lookup.hashtag_counts)
    assert not (state / "updates.jsonl").exists()
