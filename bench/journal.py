"""The user service's online profiles: update latency and start-up time with a long journal.

    python bench/journal.py [--model DIR] [--updates 10000] [--snapshot-every 1000]

On the served user model (default: the newest under $HASHREC_MODELS/user):
- one online update (UserHashtagLookup.update), with the model as served and with a
  non-zero three-way term (the core drawn at random, as a model whose early stopping kept
  a later epoch), against the update as it was before (torch autograd with the hashtag
  embeddings still requiring gradients) in the same run;
- one journal append (fsync'd);
- start-up (load and verify the model, restore the newest snapshot, replay the journal)
  after ``--updates`` journaled updates: with no snapshot (every record replayed), and with
  a snapshot every ``--snapshot-every`` updates and a crash just before the next one (the
  most a start replays); the model's load alone is the reference.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from services.user.journal import JournalRecord, UpdateJournal, encode_record
from services.user.lookup import KIND, UserHashtagLookup
from services.user.server import load_with_journal
from shared.artifacts import resolve_artifact
from shared.config import models_dir


def torch_update(lookup: UserHashtagLookup, user: str, features: np.ndarray,
                 accepted: list[int], steps: int = 30, learning_rate: float = 0.05) -> None:
    """The update before the audit (0f7f884), kept as the reference: torch autograd over
    the model's hashtag embeddings, which still required gradients."""
    row = lookup.user_index[user]
    vector = torch.tensor(lookup.user_vectors[row], requires_grad=True)
    optimizer = torch.optim.Adam([vector], lr=learning_rate)
    arrays = {name: torch.from_numpy(array) for name, array in lookup.model.arrays.items()}
    with torch.no_grad():
        standard = (torch.from_numpy(np.atleast_2d(features)) - arrays["feature_mean"]) \
            / arrays["feature_scale"]
        photo = standard @ arrays["project.weight"].T + arrays["project.bias"]
        per_coordinate = torch.einsum("edf,f->ed", arrays["core"], photo[0])
    # requires_grad: the cost the audit found
    hashtag_vectors = arrays["hashtags.weight"].clone().requires_grad_(True)
    offset = torch.from_numpy(lookup.effects.beta * lookup.log_lift(user)
                              + lookup.effects.gamma
                              * lookup.effects.content.log_probabilities(features)[0]).float()
    target = torch.tensor(accepted)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = hashtag_vectors @ (vector @ per_coordinate) + offset
        (-torch.log_softmax(logits, dim=0)[target].mean()).backward()
        optimizer.step()


def per_call(function, repeats: int) -> float:
    function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def write_journal(state: Path, lookup: UserHashtagLookup, updates: int,
                  snapshot_every: int | None, rng: np.random.Generator) -> int:
    """``updates`` records for random users and hashtags (written without an fsync each,
    to save time: the reader cannot tell); with ``snapshot_every``, the profiles are
    snapshotted as a server would and the run stops one update short of the next
    snapshot. Returns how many records remain to replay."""
    journal = UpdateJournal(state)
    features = rng.normal(size=(64, lookup.projection.shape[0])).astype(np.float32)
    with journal.path.open("ab") as file:
        for seq in range(1, updates + 1):
            user = f"user{rng.integers(2000)}"
            tags = rng.choice(len(lookup.vocabulary), size=3, replace=False).tolist()
            photo = features[seq % len(features)]
            file.write(encode_record(JournalRecord(seq, user, tuple(
                lookup.vocabulary[t] for t in tags), photo)))
            if snapshot_every:
                lookup.update(user, photo, tags)
                journal.last_seq = seq
                if seq % snapshot_every == 0 and seq < updates:  # crash before the last
                    file.flush()
                    journal.snapshot(lookup)
    return updates - ((updates - 1) // snapshot_every * snapshot_every
                      if snapshot_every else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--snapshot-every", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model = resolve_artifact(args.model or models_dir() / "user", KIND)
    rng = np.random.default_rng(0)
    lookup = UserHashtagLookup.load(model)
    print(f"model {model.name}: {len(lookup.vocabulary)} hashtags, {len(lookup.user_ids)} "
          f"users; three-way term {'active' if lookup.tensor_active else 'zero'}")
    features = rng.normal(size=lookup.projection.shape[0]).astype(np.float32)
    user, tags = lookup.user_ids[0], [1, 2, 3]

    print("\none online update (ms)")
    reference = per_call(lambda: torch_update(lookup, user, features, tags), args.repeats)
    served = per_call(lambda: lookup.update(user, features, tags), args.repeats)
    active = UserHashtagLookup.load(model)
    active.core[:] = rng.normal(scale=0.05, size=active.core.shape)
    active.model.arrays["core"][:] = active.core  # what the reference reads
    with_tensor = per_call(lambda: active.update(user, features, tags), args.repeats)
    with_tensor_reference = per_call(lambda: torch_update(active, user, features, tags),
                                     args.repeats)
    print(f"{'':<34}{'ms':>9}{'x before':>10}")
    for name, seconds, before in (
            ("as served (before: torch)", served, reference),
            ("three-way term active", with_tensor, with_tensor_reference)):
        print(f"{name:<34}{1000 * seconds:>9.2f}{before / seconds:>10.1f}")
    print(f"{'before, torch autograd':<34}{1000 * reference:>9.2f}")

    with tempfile.TemporaryDirectory(prefix="hashrec-journal-") as scratch:
        journal = UpdateJournal(Path(scratch) / "append")
        append = per_call(lambda: journal.append(user, ["a", "b"], features), args.repeats)
        print(f"\none journal append with fsync: {1000 * append:.2f} ms")

        print(f"\nstart-up after {args.updates:,} journaled updates (s)")
        load = per_call(lambda: UserHashtagLookup.load(model), 2)
        rows = [("model load alone (reference)", load, 0)]
        for name, every in (("journal only, no snapshot", None),
                            (f"snapshot every {args.snapshot_every:,}", args.snapshot_every)):
            state = Path(scratch) / f"state-{every}"
            replay = write_journal(state / model.name, UserHashtagLookup.load(model),
                                   args.updates, every, rng)
            started = time.perf_counter()
            restored, _ = load_with_journal(model, state)
            rows.append((name, time.perf_counter() - started, replay))
            assert len(restored.user_ids) > len(lookup.user_ids)
            shutil.rmtree(state)
        print(f"{'':<34}{'replayed':>9}{'s':>9}{'x load':>9}")
        for name, seconds, replayed in rows:
            print(f"{name:<34}{replayed:>9,}{seconds:>9.2f}{seconds / load:>9.1f}")


if __name__ == "__main__":
    main()
