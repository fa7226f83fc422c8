"""Zhong et al.'s experiments: the KS test (§2) and bidirectional H2L / L2H prediction (§3).

H2L predicts an image's labels from its hashtags; L2H its hashtags from its labels. Both are
the same experiment with the two sides swapped, so one function runs both:

- inputs  X_i (hashtags for H2L, labels for L2H) are known for every image, test included —
  they are what a prediction starts from — so the embeddings may be learned on all images;
- targets Y_i (labels for H2L, the 100 most frequent hashtags for L2H) are seen for the
  training images only.

Methods, each scored by O-P / O-R / O-F1 over its top 3:
- ``*_frequency``: the 3 most frequent targets of the training images, for every image;
- ``word2vec``: skip-gram vectors of the input terms (each image's inputs are a sentence),
  image feature = mean of its inputs' vectors, then a logistic classifier per target;
- ``deepwalk``: DeepWalk on the bipartite graph image — input term, image feature = the
  image node's vector, then the same classifier.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

from services.graph.model import DeepWalkParams, bipartite_graph, deepwalk
from services.word.model import Word2VecParams, train_word2vec
from shared.classifier import fit_logistic
from shared.data.normalize import Vocabulary
from shared.eval.metrics import overall_precision_recall_f1, top_k

log = logging.getLogger(__name__)

TOP_K = 3
N_TARGETS = 100


@dataclass
class Example:
    """One image of the task: what is known about it and what is to be predicted."""

    inputs: tuple[str, ...]
    targets: tuple[str, ...]


@dataclass
class TaskResult:
    n_train: int
    n_test: int
    results: dict[str, dict[str, float]]
    seconds: dict[str, float]
    image_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    test_targets: list[tuple[str, ...]] = field(default_factory=list)


def prepare(train: Sequence[Example], test: Sequence[Example], min_input_count: int,
            n_targets: int = N_TARGETS) -> tuple[list[Example], list[Example], Vocabulary,
                                                 Vocabulary]:
    """Restricts inputs to terms seen ``min_input_count`` times (over all images: inputs are
    public) and targets to the ``n_targets`` most frequent among the training images; drops
    images left with no input or no target, as Zhong et al. keep images with these terms."""
    input_vocab = Vocabulary.build([ex.inputs for ex in (*train, *test)], min_input_count)
    target_vocab = Vocabulary.build([ex.targets for ex in train], 1, n_targets)

    def kept(examples: Sequence[Example]) -> list[Example]:
        result = []
        for ex in examples:
            inputs = tuple(t for t in ex.inputs if t in input_vocab)
            targets = tuple(t for t in ex.targets if t in target_vocab)
            if inputs and targets:
                result.append(Example(inputs, targets))
        return result

    train_kept, test_kept = kept(train), kept(test)
    log.info("task images: train %d of %d, test %d of %d kept (>= 1 input term of %d and "
             ">= 1 target of %d)", len(train_kept), len(train), len(test_kept), len(test),
             len(input_vocab), len(target_vocab))
    if not train_kept or not test_kept:
        raise ValueError("no image has both an input term and a target left: "
                         "lower --min-count or check the data set")
    return train_kept, test_kept, input_vocab, target_vocab


def target_matrix(examples: Sequence[Example], vocab: Vocabulary) -> np.ndarray:
    """Binary (examples × targets) matrix of which targets each example has."""
    matrix = np.zeros((len(examples), len(vocab)), dtype=np.float32)
    for row, ex in enumerate(examples):
        matrix[row, vocab.encode(ex.targets)] = 1.0
    return matrix


def rank_targets(train_features: np.ndarray, train_targets: np.ndarray,
                 test_features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Top-3 targets of each test image by a logistic classifier per target."""
    model = fit_logistic(train_features, train_targets, seed=seed)
    return top_k(model.scores(test_features), TOP_K)


def run_bidirectional(train: Sequence[Example], test: Sequence[Example], frequency_name: str,
                      word2vec: Word2VecParams, deepwalk_params: DeepWalkParams,
                      min_input_count: int = 5, seed: int = 0,
                      methods: Sequence[str] = ("frequency", "word2vec", "deepwalk"),
                      ) -> TaskResult:
    train, test, input_vocab, target_vocab = prepare(train, test, min_input_count)
    truth = [frozenset(target_vocab.encode(ex.targets)) for ex in test]
    y_train = target_matrix(train, target_vocab)
    all_examples = [*train, *test]
    result = TaskResult(len(train), len(test), {}, {},
                        test_targets=[ex.targets for ex in test])

    def score(name: str, ranked: np.ndarray, started: float) -> None:
        result.results[name] = {key: round(value, 2) for key, value in
                                overall_precision_recall_f1(ranked, truth, TOP_K).items()}
        result.seconds[name] = round(time.perf_counter() - started, 2)
        log.info("%s: %s in %.1f s", name, result.results[name], result.seconds[name])

    if "frequency" in methods:
        started = time.perf_counter()
        most_frequent = np.argsort(-y_train.sum(axis=0), kind="stable")[:TOP_K]
        score(frequency_name, np.tile(most_frequent, (len(test), 1)), started)

    def classify(name: str, features: np.ndarray, started: float) -> None:
        score(name, rank_targets(features[: len(train)], y_train, features[len(train):], seed),
              started)
        result.image_vectors[name] = features[len(train):]

    if "word2vec" in methods:
        started = time.perf_counter()
        vectors = train_word2vec([ex.inputs for ex in all_examples],
                                 replace(word2vec, min_count=min_input_count))
        classify("word2vec", vectors.mean_of([ex.inputs for ex in all_examples]), started)

    if "deepwalk" in methods:
        started = time.perf_counter()
        graph = bipartite_graph([input_vocab.encode(ex.inputs) for ex in all_examples],
                                len(input_vocab))
        log.info("graph: %d image + %d term nodes, %d edges", len(all_examples),
                 len(input_vocab), graph.n_edges)
        node_vectors = deepwalk(graph, deepwalk_params).vectors
        classify("deepwalk", node_vectors[: len(all_examples)], started)
    return result


VALIDATION_SHARE = 0.2


def choose_window(train: Sequence[Example], windows: Sequence[int], frequency_name: str,
                  word2vec: Word2VecParams, deepwalk_params: DeepWalkParams,
                  min_input_count: int = 5, seed: int = 0,
                  ) -> tuple[int, dict[int, float]]:
    """(the skip-gram window whose DeepWalk features give the best O-F1, each window's
    O-F1), measured on a seeded validation split of the *training* images: the test
    images take no part in the choice. Ties go to the smaller (cheaper) window."""
    order = np.random.default_rng([seed, 11]).permutation(len(train))
    cut = round(len(train) * (1 - VALIDATION_SHARE))
    fit, validation = [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]
    scores = {}
    for window in windows:
        params = replace(deepwalk_params,
                         skipgram=replace(deepwalk_params.skipgram, window=window))
        result = run_bidirectional(fit, validation, frequency_name, word2vec, params,
                                   min_input_count, seed, methods=("deepwalk",))
        scores[window] = result.results["deepwalk"]["O-F1"]
        log.info("window %d: validation O-F1 %.2f", window, scores[window])
    return max(windows, key=lambda w: (scores[w], -w)), scores


@dataclass
class KsResult:
    statistic: float
    p_value: float
    permutation_p_value: float
    n_permutations: int
    n_hashtags: int
    n_labels: int
    n_images: int


def _ks_statistic(tagged: np.ndarray, labels: np.ndarray) -> float:
    """Zhong's statistic: KS distance between the pooled label rates of images with and
    without each hashtag (tagged: images × hashtags, labels: images × labels, both 0/1)."""
    with_counts = tagged.T @ labels
    n_with = tagged.sum(axis=0)[:, None]
    with_rates = with_counts / n_with
    without_rates = (labels.sum(axis=0)[None, :] - with_counts) / (len(labels) - n_with)
    return float(stats.ks_2samp(with_rates.ravel(), without_rates.ravel()).statistic)


def ks_test(hashtags: Sequence[Sequence[str]], labels: Sequence[Sequence[str]],
            n_hashtags: int = N_TARGETS, min_images: int = 5, n_permutations: int = 999,
            seed: int = 0) -> KsResult:
    """Zhong et al. §2: for each of the ``n_hashtags`` most frequent hashtags h, hc_c holds the
    rate of every label among images tagged h and hc_d among images not tagged h; the
    two-sample KS test asks whether the pooled rates come from one distribution
    (H0: hashtags carry no information about image contents).

    ``p_value`` is the asymptotic KS p-value the paper reports. It is not calibrated for
    this use: hc_c averages over few images and hc_d over many, so their spreads differ even
    under H0 (hashtags shuffled across images still give p ≈ 1e-7 on MIRFlickr). The
    ``permutation_p_value`` is: the same statistic recomputed with hashtag sets shuffled
    across images ``n_permutations`` times, p = (1 + #{perm ≥ observed}) / (1 + n_perm).
    """
    images = [(set(h), set(ls)) for h, ls in zip(hashtags, labels, strict=True) if h and ls]
    label_vocab = Vocabulary.build([ls for _, ls in images])
    counts = Counter(tag for tags, _ in images for tag in tags)
    chosen = [tag for tag, count in counts.most_common(n_hashtags) if count >= min_images]
    if not chosen:
        raise ValueError(f"no hashtag is on {min_images} labelled images: nothing to test")
    label_matrix = np.zeros((len(images), len(label_vocab)), dtype=np.float64)
    tagged = np.zeros((len(images), len(chosen)), dtype=np.float64)
    column = {tag: i for i, tag in enumerate(chosen)}
    for row, (tags, ls) in enumerate(images):
        label_matrix[row, label_vocab.encode(ls)] = 1.0
        tagged[row, [column[t] for t in tags if t in column]] = 1.0
    with_counts = tagged.T @ label_matrix
    n_with = tagged.sum(axis=0)[:, None]
    with_rates = (with_counts / n_with).ravel()
    without_rates = ((label_matrix.sum(axis=0)[None, :] - with_counts)
                     / (len(images) - n_with)).ravel()
    observed = stats.ks_2samp(with_rates, without_rates)
    rng = np.random.default_rng(seed)
    exceed = sum(_ks_statistic(tagged[rng.permutation(len(images))], label_matrix)
                 >= observed.statistic for _ in range(n_permutations))
    return KsResult(float(observed.statistic), float(observed.pvalue),
                    (1 + exceed) / (1 + n_permutations), n_permutations, len(chosen),
                    len(label_vocab), len(images))
