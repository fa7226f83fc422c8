"""How many hashtags are not English (issue #28 item 4), in HARRISON, MIRFlickr and
#HowYouTagTweets, by distinct hashtag and by use.

    .venv/bin/python bench/languages.py      # prints the table, writes out/languages.json

Each normalised hashtag falls in one class:
- ``other script``: a letter outside the Latin script (Arabic, CJK, Cyrillic, Thai, ...);
- ``latin, accented``: Latin letters with a diacritic (é, ñ, ş, ...): not English;
- ``english words``: plain ASCII that symspellpy's English dictionary alone (82,765 words,
  no social-media additions) splits into known words ("foodporn" → "food porn");
- ``ascii, other``: plain ASCII with a part no English word covers: another language
  written in ASCII ("comida", "essen"), but also English slang, names and brands
  ("instagood", "nyc"): an upper bound on non-English ASCII, not a count of it.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path

CORPORA = (("HARRISON", "harrison:harrison"), ("MIRFlickr", "dcmr:mirflickr25k"),
           ("#HowYouTagTweets", "howyoutag:howyoutag"))
CLASSES = ("other script", "latin, accented", "english words", "ascii, other")


def classify(hashtag: str, words: dict, segment) -> str:
    letters = [c for c in hashtag if c.isalpha()]
    if any(not unicodedata.name(c, "").startswith("LATIN") for c in letters):
        return "other script"
    if not hashtag.isascii():
        return "latin, accented"
    parts = segment(hashtag).split()
    known = all(part.isdigit() or part in words for part in parts)
    return "english words" if known else "ascii, other"


def main() -> None:
    import symspellpy

    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    symspell = symspellpy.SymSpell(max_dictionary_edit_distance=0, prefix_length=7)
    symspell.load_dictionary(str(Path(symspellpy.__file__).parent
                                 / "frequency_dictionary_en_82_765.txt"), 0, 1)

    def segment(hashtag: str) -> str:
        return symspell.word_segmentation(hashtag, max_edit_distance=0).corrected_string

    report = {}
    for name, spec in CORPORA:
        uses = Counter(t for post in normalize_post_hashtags(read_posts(spec))
                       for t in post.hashtags)
        kind = {tag: classify(tag, symspell.words, segment) for tag in uses}
        distinct = Counter(kind.values())
        used = Counter()
        for tag, count in uses.items():
            used[kind[tag]] += count
        total_distinct, total_used = len(uses), sum(uses.values())
        report[name] = {
            "hashtags": total_distinct, "uses": total_used,
            "distinct_percent": {c: round(100 * distinct[c] / total_distinct, 2)
                                 for c in CLASSES},
            "use_percent": {c: round(100 * used[c] / total_used, 2) for c in CLASSES},
            "examples": {c: [t for t, _ in uses.most_common() if kind[t] == c][:8]
                         for c in CLASSES}}
    print(f"{'corpus':<18}{'hashtags':>9}{'uses':>9}  " + "  ".join(
        f"{c:>16}" for c in CLASSES) + "   (percent of distinct hashtags / of uses)")
    for name, row in report.items():
        cells = "  ".join(f"{row['distinct_percent'][c]:>7.2f}/{row['use_percent'][c]:<8.2f}"
                          for c in CLASSES)
        print(f"{name:<18}{row['hashtags']:>9}{row['uses']:>9}  {cells}")
    for name, row in report.items():
        for c in ("other script", "latin, accented", "ascii, other"):
            print(f"{name} {c}: {' '.join('#' + t for t in row['examples'][c])}")
    out = Path("out")
    out.mkdir(exist_ok=True)
    (out / "languages.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
