"""Hashtag normalisation, synonym merging and vocabulary limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.data.normalize import (
    DEBIAN_WORDNET,
    SynonymMerger,
    Vocabulary,
    normalize_hashtag,
    normalize_post_hashtags,
)
from shared.data.readers import Post


@pytest.mark.parametrize(("raw", "term"), [
    ("#Beach", "beach"),
    ("##SunSet!!", "sunset"),
    ("French Fries", "frenchfries"),           # multi-word tag = the hashtag's spelling
    ("#frenchfries", "frenchfries"),
    ("#l'amour", "lamour"),                    # punctuation goes
    ("Ｔｏｋｙｏ", "tokyo"),                     # NFKC folds full-width letters
    ("#Straße", "strasse"),                    # case folding, not just lower()
    ("#café", "café"),                         # letters with accents stay, composed
    ("#cafe\u0301", "café"),                   # decomposed input composes to the same term
    ("#日本", "日本"),
    ("#2019", "2019"),
    ("#❤️", None),                             # nothing but an emoji: no term
    ("#", None),
    ("", None),
])
def test_normalize_hashtag(raw: str, term: str | None) -> None:
    assert normalize_hashtag(raw) == term


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="hashtag must be a string"):
        normalize_hashtag(42)  # type: ignore[arg-type]


def test_posts_lose_duplicate_and_empty_tags_but_keep_order() -> None:
    post = Post("p", None, ("#Sun", "sun", "#🔥", "Beach!", "#SUN"))
    (normalized,) = normalize_post_hashtags([post])
    assert normalized.hashtags == ("sun", "beach")


def test_vocabulary_min_count_top_n_and_stable_ties() -> None:
    documents = [["b", "a", "c"], ["a", "b"], ["a", "d"], ["a", "a"]]
    vocab = Vocabulary.build(documents, min_count=2)
    assert vocab.terms == ("a", "b")  # counted once per document
    assert vocab.counts == (4, 2)
    assert Vocabulary.build(documents, max_size=3).terms == ("a", "b", "c")
    assert vocab.encode(["z", "b", "a"]) == [1, 0]


@pytest.mark.skipif(not (DEBIAN_WORDNET / "data.noun").is_file(),
                    reason="WordNet (wordnet-base) is installed by scripts/setup.sh as root")
def test_wordnet_merges_synonyms_to_one_canonical_term(tmp_path: Path) -> None:
    merge = SynonymMerger(tmp_path)
    assert merge("coffeehouse") == merge("cafe") == "cafe"
    assert merge("automobile") == merge("car")
    assert merge("notawordxyz") == "notawordxyz"
