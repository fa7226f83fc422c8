"""MiniLM against multilingual E5 as the semantic method's text encoder (issue #28 item 4),
on the held-out photos whose hashtags are not English.

    HASHREC_MODELS=DIR .venv/bin/hashrec train --hold-out 0 --out A
    HASHREC_TEXT_ENCODER=e5 HASHREC_MODELS=DIR .venv/bin/hashrec train --hold-out 0 --out B
    HASHREC_MODELS=DIR .venv/bin/python bench/text_encoders.py A/<version> B/<version>

Both models are the default (every photo set, the semantic method among seven) trained on
the same 80 % of each set; they differ in the encoder alone. Each is asked, as
`evaluate served` asks, for the held-out 20 % of each set, and the table gives R@5, A@5
and A@1 over three groups of photos: all, those whose own hashtags include one not in
English by bench/languages.py's classes (another script, or accented Latin letters), and
the rest. Truth: every tag of the poster's (the non-English ones are rarely in a set's
vocabulary). Writes out/text_encoders.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.languages import classify

SETS = (("instagram", "instagram:instagram"), ("food", "food:food"),
        ("flickr", "dcmr:mirflickr25k"))
NOT_ENGLISH = ("other script", "latin, accented")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help="hold-out model directories")
    args = parser.parse_args()

    import symspellpy

    from commands.experiments.served import evaluate_served, in_process_answer
    from commands.train import held_out_split
    from services.image_models import load_image_models
    from services.vision.store import FeatureStore
    from shared.config import models_dir
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    symspell = symspellpy.SymSpell(max_dictionary_edit_distance=0, prefix_length=7)
    symspell.load_dictionary(str(Path(symspellpy.__file__).parent
                                 / "frequency_dictionary_en_82_765.txt"), 0, 1)

    def segment(hashtag: str) -> str:
        return symspell.word_segmentation(hashtag, max_edit_distance=0).corrected_string

    def not_english(post) -> bool:
        return any(classify(t, symspell.words, segment) in NOT_ENGLISH for t in post.hashtags)

    store = FeatureStore(models_dir() / "features")
    report: dict = {"models": {}, "results": {}}
    loaded = {}
    for directory in args.models:
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest.get("hold_out") is None:
            raise SystemExit(f"{directory} trained on every photo: train with --hold-out 0")
        name = manifest.get("text_model", "no semantic method")
        report["models"][name] = directory.name
        loaded[name] = (load_image_models(directory), manifest)
    for set_name, spec in SETS:
        posts = normalize_post_hashtags(read_posts(spec))
        for name, (models, manifest) in loaded.items():
            community = next(c for c in manifest["communities"] if c["name"] == set_name)
            train, test = held_out_split(posts, manifest["hold_out"]["seed"])
            photos = [p for p in test if p.image is not None]
            groups = {"all": photos, "not English": [p for p in photos if not_english(p)],
                      "English": [p for p in photos if not not_english(p)]}
            for group, members in groups.items():
                if not members:
                    continue
                result = evaluate_served(train, members, in_process_answer(models, store),
                                         frozenset(community["ignored"]))
                row = result.results.get("all tags")
                if row:
                    report["results"].setdefault(set_name, {}).setdefault(group, {})[name] = row
    print(f"{'set':<14}{'photos':<13}{'encoder':<40}{'n':>6}{'R@5':>8}{'A@5':>8}{'A@1':>8}")
    for set_name, groups in report["results"].items():
        for group, rows in groups.items():
            for name, row in rows.items():
                print(f"{set_name:<14}{group:<13}{name:<40}{row['photos']:>6}"
                      f"{row['R@5']:>8.2f}{row['A@5']:>8.2f}{row['A@1']:>8.2f}")
    out = Path("out")
    out.mkdir(exist_ok=True)
    (out / "text_encoders.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
