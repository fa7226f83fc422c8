"""Hashtag normalisation: one spelling per concept before anything is counted or learned.

``normalize_hashtag`` applies, in order: Unicode NFKC (full-width and ligature forms fold to
plain letters), case folding, removal of '#' and of everything that is not a letter, mark
or digit — punctuation, emoji, spaces — so that the multi-word tag "French Fries" and the
hashtag "#frenchfries" become the same term "frenchfries". Optional WordNet synonym merging
(Zhong et al. §3.3) maps a term to the first lemma of its most frequent noun sense, so
"coffeehouse" and "cafe" merge.
"""

from __future__ import annotations

import logging
import shutil
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cache, cached_property
from pathlib import Path

from shared.data.readers import Post

log = logging.getLogger(__name__)

def normalize_hashtag(raw: str) -> str | None:
    """The vocabulary term for a hashtag as written, or None when nothing of it remains."""
    if not isinstance(raw, str):
        raise TypeError(f"hashtag must be a string, got {type(raw).__name__}")
    folded = unicodedata.normalize("NFKC", raw).casefold()
    kept = []
    previous_kept = False
    for ch in folded:
        category = unicodedata.category(ch)[0]
        # A mark counts only on a kept base letter: the variation selector of "❤️" goes
        # with its emoji, the accent of a decomposed "é" stays with its "e".
        previous_kept = category in ("L", "N") or (category == "M" and previous_kept)
        if previous_kept:
            kept.append(ch)
    term = "".join(kept)
    # casefold can produce decomposed forms (e.g. "İ"); recompose for one stored spelling.
    term = unicodedata.normalize("NFC", term)
    return term or None


# --- WordNet 3.0 from Debian's wordnet-base + wordnet-sense-index --------------------------
DEBIAN_WORDNET = Path("/usr/share/wordnet")
# nltk insists on a "lexnames" file that Debian does not ship; these are WordNet 3.0's 45
# lexicographer files in their fixed order (wndb(5WN), lexnames(5WN)).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def wordnet_dir(cache_dir: Path) -> Path:
    """A WordNet folder nltk can read, assembled once from Debian's files as
    cache_dir/corpora/wordnet (the layout of an nltk data root)."""
    target = cache_dir / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return target
    if not (DEBIAN_WORDNET / "data.noun").is_file():
        raise FileNotFoundError(
            f"WordNet 3.0 is not installed at {DEBIAN_WORDNET}: "
            "apt-get install wordnet-base wordnet-sense-index")
    target.mkdir(parents=True, exist_ok=True)
    for source in DEBIAN_WORDNET.iterdir():
        if source.is_file():
            shutil.copy2(source, target / source.name)
    (target / "lexnames").write_text("".join(
        f"{index:02d}\t{name}\t{_LEX_POS[name.split('.')[0]]}\n"
        for index, name in enumerate(_LEXNAMES)))
    return target


@cache
def _wordnet_reader(data_root: str):
    import nltk

    # nltk reads corpora only below its data roots: make the cache one of them.
    if data_root not in nltk.data.path:
        nltk.data.path.append(data_root)
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet


class SynonymMerger:
    """Maps a term to the canonical lemma of its most frequent WordNet noun sense."""

    def __init__(self, cache_dir: Path) -> None:
        wordnet_dir(cache_dir)
        self._wordnet = _wordnet_reader(str(cache_dir))
        self._canonical: dict[str, str] = {}

    def __call__(self, term: str) -> str:
        if term not in self._canonical:
            synsets = self._wordnet.synsets(term, pos="n")
            canonical = term
            if synsets:
                lemma = synsets[0].lemma_names()[0].lower()
                canonical = normalize_hashtag(lemma) or term
            self._canonical[term] = canonical
        return self._canonical[term]


def normalize_post_hashtags(posts: Sequence[Post],
                            merge: SynonymMerger | None = None) -> list[Post]:
    """Posts with normalised (and optionally merged), de-duplicated hashtags, order kept.

    Posts left with no hashtag are kept (their labels or image may still matter); the counts
    of dropped tags are logged so nothing disappears unseen.
    """
    dropped_tags = 0
    emptied = 0
    result = []
    for post in posts:
        terms: dict[str, None] = {}
        for raw in post.hashtags:
            term = normalize_hashtag(raw)
            if term is None:
                dropped_tags += 1
                continue
            terms[merge(term) if merge else term] = None
        if post.hashtags and not terms:
            emptied += 1
        result.append(replace(post, hashtags=tuple(terms)))
    if dropped_tags or emptied:
        log.info("normalisation dropped %d hashtags with no letters or digits; "
                 "%d posts were left with no hashtag", dropped_tags, emptied)
    return result


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Terms in descending frequency order; index = rank."""

    terms: tuple[str, ...]
    counts: tuple[int, ...]

    @classmethod
    def build(cls, documents: Iterable[Sequence[str]], min_count: int = 1,
              max_size: int | None = None) -> Vocabulary:
        counter = Counter(term for document in documents for term in set(document))
        # Sort by count then term so equal counts do not depend on input order.
        ranked = sorted((item for item in counter.items() if item[1] >= min_count),
                        key=lambda item: (-item[1], item[0]))[:max_size]
        return cls(tuple(term for term, _ in ranked), tuple(count for _, count in ranked))

    def __len__(self) -> int:
        return len(self.terms)

    def __contains__(self, term: object) -> bool:
        return term in self.index

    @cached_property
    def index(self) -> dict[str, int]:
        return {term: position for position, term in enumerate(self.terms)}

    def encode(self, document: Iterable[str]) -> list[int]:
        """Indices of the in-vocabulary terms of a document, order kept."""
        index = self.index
        return [index[term] for term in document if term in index]
