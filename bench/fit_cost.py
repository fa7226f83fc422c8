"""Each default method's fit alone, on one thread, on the default model's training photos
(every shipped photo set, the served recipe): the seconds `FIT_COST` in
commands/experiments/image2tag.py orders the fits by, and the per-fit figures behind the
README's training paragraph.

    python bench/fit_cost.py [METHOD ...]      default: the seven default methods

Features come from the feature store ($HASHREC_MODELS/features; the first run embeds the
photos it lacks). bench/train.py gives the same methods' CPU seconds inside a whole
training run (three folds and the final fit together).
"""

from __future__ import annotations

import sys
import time

from commands.experiments.image2tag import (
    Community,
    community_photos,
    make_methods,
    n_communities,
    one_thread,
)
from commands.train import (
    DEFAULT_COMMUNITIES,
    DEFAULT_CORPORA,
    DEFAULT_METHODS,
    hashtag_knowledge,
    held_out_split,
)
from services.vision.store import FeatureStore
from shared.config import models_dir
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts


def main() -> None:
    names = sys.argv[1:] or list(DEFAULT_METHODS)
    members, read = [], {}
    for name, spec, ignore in DEFAULT_COMMUNITIES:
        read[spec], _ = held_out_split(normalize_post_hashtags(read_posts(spec)), None)
        members.append(Community(name, read[spec], ignore))
    text = hashtag_knowledge(DEFAULT_CORPORA, None, read)
    train, terms, _ = community_photos(members, FeatureStore(models_dir() / "features"), 3,
                                       1000, progress=False)
    print(f"{len(train)} photos, {len(terms)} hashtags, {n_communities(train)} communities")
    print(f"{'method':<16} {'fit s':>7} {'fit CPU s':>10} {'score s':>8}")
    for name in names:
        with one_thread():
            (method,) = make_methods([name], 0, text, n_communities(train))
            started, cpu = time.perf_counter(), time.process_time()
            method.fit(train, terms)
            fitted = time.perf_counter()
            method.scores(train)
            print(f"{name:<16} {fitted - started:>7.1f} {time.process_time() - cpu:>10.1f} "
                  f"{time.perf_counter() - fitted:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
