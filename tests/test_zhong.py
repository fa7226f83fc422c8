"""Zhong et al.'s experiments end to end on a real slice of MIRFlickr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from commands.cli import main
from commands.experiments.zhong import Example, ks_test, run_bidirectional
from services.graph.model import DeepWalkParams, SkipGramParams
from services.word.model import Word2VecParams
from shared.classifier import fit_logistic, mean_average_precision
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts

SMALL_WALKS = DeepWalkParams(walks_per_node=4, walk_length=20,
                             skipgram=SkipGramParams(dim=64, epochs=2))
SMALL_WORDS = Word2VecParams(dim=64)


@pytest.fixture(scope="module")
def mirflickr_slice(data_dir: Path) -> list:
    posts = normalize_post_hashtags(read_posts(f"dcmr:{data_dir / 'mirflickr25k'}"))
    return posts[:5000]


def test_h2l_embeddings_beat_label_frequency_on_real_data(mirflickr_slice: list) -> None:
    examples = [Example(p.hashtags, p.labels) for p in mirflickr_slice]
    result = run_bidirectional(examples[:4000], examples[4000:], "label_frequency",
                               SMALL_WORDS, SMALL_WALKS, min_input_count=3)
    frequency = result.results["label_frequency"]["O-P"]
    assert result.results["word2vec"]["O-P"] > frequency + 10
    assert result.results["deepwalk"]["O-P"] > frequency + 10
    assert result.n_test > 700


def test_l2h_predicts_hashtags_from_labels_better_than_frequency(mirflickr_slice: list,
                                                                  ) -> None:
    examples = [Example(p.labels, p.hashtags) for p in mirflickr_slice]
    result = run_bidirectional(examples[:4000], examples[4000:], "hashtag_frequency",
                               SMALL_WORDS, SMALL_WALKS, min_input_count=1)
    assert set(result.results) == {"hashtag_frequency", "word2vec", "deepwalk"}
    frequency = result.results["hashtag_frequency"]["O-P"]
    assert result.results["deepwalk"]["O-P"] > frequency


def test_ks_test_rejects_no_relation_on_real_tags(mirflickr_slice: list) -> None:
    result = ks_test([p.hashtags for p in mirflickr_slice],
                     [p.labels for p in mirflickr_slice], n_permutations=199)
    assert result.n_labels == 24 and result.n_hashtags == 100
    assert result.p_value < 1e-3
    assert result.permutation_p_value == 1 / 200  # no shuffle comes near the real statistic


def test_ks_permutation_p_value_keeps_h0_when_hashtags_are_shuffled(mirflickr_slice: list,
                                                                    ) -> None:
    import random

    hashtags = [p.hashtags for p in mirflickr_slice]
    random.Random(0).shuffle(hashtags)
    result = ks_test(hashtags, [p.labels for p in mirflickr_slice], n_permutations=199)
    assert result.permutation_p_value > 0.05
    # The paper's asymptotic p-value rejects even here: the reason for the permutation one.
    assert result.p_value < 1e-3


def test_logistic_ranks_labels_of_a_linear_rule() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, 5)).astype(np.float32)
    targets = np.stack([features[:, 0] > 0, features[:, 1] > 0.5], axis=1).astype(np.float32)
    model = fit_logistic(features[:500], targets[:500])
    assert mean_average_precision(model.scores(features[500:]), targets[500:]) > 0.9


def test_cli_writes_the_h2l_table_as_json(tmp_path: Path, data_dir: Path, capsys) -> None:
    posts = tmp_path / "posts.jsonl"
    rows = read_posts(f"dcmr:{data_dir / 'mirflickr25k'}")[:1500]
    posts.write_text("".join(json.dumps({"hashtags": list(p.hashtags),
                                         "labels": list(p.labels)}) + "\n" for p in rows))
    out = tmp_path / "h2l.json"
    code = main(["evaluate", "h2l", "--train", f"jsonl:{posts}", "--json", str(out),
                 "--dim", "32", "--walks-per-node", "2", "--walk-length", "10",
                 "--min-count", "2"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["task"] == "h2l" and report["n_train"] > 4 * report["n_test"] * 0.9
    assert set(report["results"]) == {"label_frequency", "word2vec", "deepwalk"}
    assert set(report["results"]["deepwalk"]) == {"O-P", "O-R", "O-F1"}
    assert "label_frequency" in capsys.readouterr().out


def test_cli_says_when_a_data_set_has_no_labels(data_dir: Path, capsys) -> None:
    with pytest.raises(SystemExit, match="has no labels"):
        main(["evaluate", "h2l", "--train", f"food:{data_dir / 'food'}"])


def test_the_skip_gram_window_is_chosen_without_the_test_images(tmp_path: Path,
                                                                data_dir: Path) -> None:
    """--window 2,5: chosen on a validation split of the training images, so two different
    test sets leave the choice and its validation figures exactly as they were."""
    rows = read_posts(f"dcmr:{data_dir / 'mirflickr25k'}")[:2400]
    files = {}
    for name, part in (("train", rows[:1600]), ("test_a", rows[1600:2000]),
                       ("test_b", rows[2000:])):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"hashtags": list(p.hashtags),
                                                   "labels": list(p.labels)}) + "\n"
                                       for p in part))
    reports = []
    for test in ("test_a", "test_b"):
        out = tmp_path / f"{test}.json"
        assert main(["evaluate", "h2l", "--train", f"jsonl:{files['train']}", "--test",
                     f"jsonl:{files[test]}", "--json", str(out), "--methods", "deepwalk",
                     "--window", "2,5", "--dim", "32", "--walks-per-node", "2",
                     "--walk-length", "10", "--min-count", "2",
                     "--workers", "1"]) == 0  # one gensim thread: deterministic
        reports.append(json.loads(out.read_text()))
    choice = reports[0]["window_choice"]
    assert choice == reports[1]["window_choice"]
    scores = {int(w): s for w, s in choice["validation_o_f1"].items()}
    assert set(scores) == {2, 5} and choice["chosen"] == max(scores, key=scores.get)
    assert reports[0]["results"] != reports[1]["results"]  # the test sets did differ
