"""HARRISON's MLP with a sigmoid per hashtag against the same network trained with the
softmax likelihood of each photo's hashtags (Veit's multi-class logistic loss), and the
served choice between them ("auto": the better on a held-out tenth of the training).

    python bench/mlp_loss.py [--seeds 0,1,2,3]

For every shipped photo set and several seeded 80/20 splits (the split `hashrec evaluate
image2tag` makes), P@1 and R@5 of both on the held-out photos, per split and on average.
"""

from __future__ import annotations

import argparse

import numpy as np

from commands.experiments.image2tag import photo_metrics
from commands.experiments.photos import readable_photos, training_photos, without_ignored
from commands.train import INSTAGRAM_SEARCH_TAGS
from services.recommender.model import MlpMethod
from services.vision.store import FeatureStore
from shared.config import models_dir, setup_logging
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from shared.data.split import seeded_split

SETS = (("instagram:instagram", INSTAGRAM_SEARCH_TAGS), ("food:food", frozenset()),
        ("dcmr:mirflickr25k", frozenset()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3")
    args = parser.parse_args()
    setup_logging("WARNING")
    store = FeatureStore(models_dir() / "features")
    print(f"{'set':<22}{'seed':>5}{'photos':>8}{'sigmoid P@1':>13}{'R@5':>7}"
          f"{'softmax P@1':>13}{'R@5':>7}{'auto P@1':>13}{'R@5':>7}")
    for spec, ignore in SETS:
        posts = normalize_post_hashtags(read_posts(spec))
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            train, test = seeded_split(posts, seed)
            photos, vocab = training_photos(train, store, ignore, 3, 1000, progress=False)
            kept, test_photos = readable_photos(without_ignored(test, ignore), store,
                                                progress=False)
            ids = [frozenset(vocab.encode(p.hashtags)) for p in kept]
            keep = np.array([i for i, t in enumerate(ids) if t])
            truth = [ids[i] for i in keep]
            figures = []
            for loss in ("sigmoid", "softmax", "auto"):
                method = MlpMethod(loss=loss)
                method.fit(photos, vocab.terms)
                result = photo_metrics(method.scores(test_photos.subset(keep)), truth)
                figures += [result["P@1"], result["R@5"]]
            rows.append(figures)
            print(f"{spec:<22}{seed:>5}{len(keep):>8}" + "".join(
                f"{v:>{13 if i % 2 == 0 else 7}.1f}" for i, v in enumerate(figures)),
                flush=True)
        mean = np.mean(rows, axis=0)
        print(f"{spec:<22}{'mean':>5}{'':>8}" + "".join(
            f"{v:>{13 if i % 2 == 0 else 7}.1f}" for i, v in enumerate(mean)))


if __name__ == "__main__":
    main()
