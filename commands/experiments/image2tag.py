"""Photo → hashtags on real photos: every candidate method and their fusion, side by side.

Protocol (HARRISON §4, Veit §4.2):
- only posts with a readable photo take part; ``ignore`` tags (e.g. the search hashtags a
  data set was collected by) are removed from every post before anything else;
- the vocabulary is the training posts' hashtags seen ``min_count`` times (at most
  ``max_vocab``, HARRISON uses 1,000); test posts are scored on their in-vocabulary hashtags
  and dropped (counted) when they have none;
- fusion weights are fit on out-of-fold scores of the training posts (5 seeded folds, every
  method refit without the fold it scores); the test posts touch nothing but the final
  scores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from commands.engine import Engine, LocalEngine
from commands.experiments.photos import (  # noqa: F401  (callers import them from here)
    Community,
    community_photos,
    n_communities,
    readable_photos,
    training_photos,
    without_ignored,
)
from services.graph.model import JointGraphMethod
from services.recommender.model import (
    FrequencyMethod,
    Fusion,
    GatedMethod,
    KnnMethod,
    Method,
    MlpMethod,
    RankFusion,
)
from services.vision.model import class_names
from services.vision.store import FeatureStore
from services.word.autorec import AutoRecMethod, AutoRecParams
from services.word.model import InstaHashMethod, Word2VecParams, train_word2vec
from services.word.semantic import SemanticMethod, TextResources
from shared.config import fit_passes_limit
from shared.data.readers import Post
from shared.eval.metrics import (
    accuracy_at_k,
    precision_at_k,
    recall_at_k,
    set_similarity,
    top_k,
)
from shared.photos import PhotoSet

log = logging.getLogger(__name__)

METHODS = ("frequency", "knn", "mlp", "word", "graph")


def photo_metrics(scores: np.ndarray, truth: Sequence[frozenset[int]]) -> dict[str, float]:
    ranked = top_k(scores, 10)
    return {"P@1": precision_at_k(ranked, truth, 1), "R@5": recall_at_k(ranked, truth, 5),
            "A@5": accuracy_at_k(ranked, truth, 5), "A@1": accuracy_at_k(ranked, truth, 1),
            "A@10": accuracy_at_k(ranked, truth, 10)}


def top5_agreement(scores: np.ndarray, reference: np.ndarray) -> float:
    """Mean Jaccard overlap of two methods' top-5 hashtags over the photos: how much a
    second method could add to the first in a fusion."""
    ours, theirs = top_k(scores, 5), top_k(reference, 5)
    return float(np.mean([len(set(a) & set(b)) / len(set(a) | set(b))
                          for a, b in zip(ours.tolist(), theirs.tolist(), strict=True)]))


def make_methods(names: Sequence[str], seed: int,
                 text: TextResources | None = None, communities: int = 1) -> list[Method]:
    """The named methods, unfitted; ``text``: what the semantic method reads;
    ``communities`` > 1: each method one per community, mixed by a gate (GatedMethod)."""
    if communities > 1:
        per_community = [make_methods(names, seed, text) for _ in range(communities)]
        return [GatedMethod([methods[i] for methods in per_community])
                for i in range(len(names))]
    names_of_classes = class_names()
    factories: dict[str, Callable[[], Method]] = {
        "frequency": FrequencyMethod,
        "knn": KnnMethod,
        "mlp": lambda: MlpMethod(seed=seed),
        "word": lambda: InstaHashMethod(names_of_classes),
        "graph": lambda: JointGraphMethod(names_of_classes),
        "autorec": lambda: AutoRecMethod(names_of_classes, "autorec"),
        "instahash": lambda: AutoRecMethod(names_of_classes, "intersection"),
        "autorec_masked": lambda: AutoRecMethod(names_of_classes, "autorec",
                                                AutoRecParams(masked=True),
                                                name="autorec_masked"),
        "semantic": lambda: SemanticMethod(names_of_classes, text),
    }
    unknown = set(names) - set(factories)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(factories)}")
    passes = fit_passes_limit()
    return [factories[name]() if passes is None else with_passes(factories[name](), passes)
            for name in names]


def with_passes(method: Method, passes: int) -> Method:
    """``method`` making at most ``passes`` passes over the photos ($HASHREC_FIT_PASSES):
    the MLP's and AutoRec's epochs (AutoRec's least number of updates too), DeepWalk's
    walks from each node and its skip-gram's epochs. The others make one pass already."""
    if isinstance(method, MlpMethod):
        method.max_epochs = min(method.max_epochs, passes)
    elif isinstance(method, AutoRecMethod):
        method.params = replace(method.params, epochs=min(method.params.epochs, passes),
                                min_updates=0)
    elif isinstance(method, JointGraphMethod):
        walks = method.params
        method.params = replace(
            walks, walks_per_node=min(walks.walks_per_node, passes),
            skipgram=replace(walks.skipgram, epochs=min(walks.skipgram.epochs, passes)))
    return method


@dataclass
class Image2TagResult:
    n_train: int
    n_test: int
    vocabulary: tuple[str, ...]
    results: dict[str, dict[str, float]]
    seconds: dict[str, float]
    fusion_weights: dict[str, float]
    fusion_mode: str
    #: mean Jaccard overlap of each method's top 5 with the best single method's top 5
    agreement: dict[str, float]
    #: InstaHash's own measure of each method's top 5 against the truth (metrics.py)
    similarity: dict[str, dict[str, float]] = field(default_factory=dict)


def hashtag_word_vectors(train: PhotoSet, terms: Sequence[str], seed: int) -> np.ndarray:
    """One Word2Vec vector per vocabulary id, trained on the training photos' hashtag lists
    alone (as InstaHash's own Word2Vec model is trained on its posts' hashtags): the space
    InstaHash measures recommendations in. Terms Word2Vec never saw get a zero row."""
    documents = [[terms[i] for i in ids] for ids in train.hashtags]
    model = train_word2vec(documents, Word2VecParams(dim=128, min_count=1, epochs=20,
                                                     permutations=3, seed=seed))
    vectors = np.zeros((len(terms), model.dim), dtype=np.float32)
    for row, term in enumerate(terms):
        if term in model.index:
            vectors[row] = model.vectors[model.index[term]]
    return vectors


#: a method's fit time relative to the others' (seconds on the default model's photos, one
#: thread: bench/train.py's stages); the engine starts the longest fits first, so the last
#: ones to finish, while a core may idle, are short
FIT_COST = {"autorec_masked": 54, "autorec": 54, "instahash": 54, "graph": 51, "mlp": 26,
            "word": 6, "semantic": 5, "knn": 1, "frequency": 1}


def folds_and_finals(train: PhotoSet, vocab: Sequence[str], methods: Sequence[str],
                     folds: int, seed: int, text: TextResources | None = None,
                     engine: Engine | None = None, finals: bool = True,
                     progress: bool = False, cpu_seconds: dict[str, float] | None = None,
                     meanwhile: Callable[[dict[str, np.ndarray]], Any] | None = None,
                     routed: dict[str, np.ndarray] | None = None,
                     scored: np.ndarray | None = None, spill: Path | None = None,
                     ) -> tuple[dict[str, np.ndarray], list[Method], Any]:
    """(every method's out-of-fold scores of every training photo, every method fit on all
    of them, what ``meanwhile`` returned). Out of fold: each photo scored by a model fit
    on the other folds, so every training photo serves as validation exactly once.

    Every (fold, method) fit and every final fit is independent of the others: ``engine``
    runs them as one batch of tasks, the out-of-fold ones first, each group the longest
    first (``FIT_COST``). ``meanwhile(scores)`` runs here as soon as the out-of-fold
    scores are in, while the final fits still run (the fusions' fit fills the cores the
    last fits leave idle). ``finals`` False: the scores alone; ``progress``: a bar counts
    the finished fits; ``cpu_seconds``: each method's CPU seconds, all its fits
    together, are added there. ``routed`` (photos of several communities): each method's
    out-of-fold scores with every photo routed to its own community, as a request that
    names it is scored, are put there too (before ``meanwhile`` runs). ``scored``: the
    rows (ascending) that get out-of-fold scores, one row of the scores each; the other
    photos are in every fold's training part and scored by none (default: every row).
    ``spill``: a folder a pool's workers and this process share, through which the final
    fits' photo indexes come (a file read, where a pickle of 0.5 GB at 100,000 photos was
    received whole and then unpickled beside itself). kNN, graph and semantic index the
    same photos: one index a community, the first's in ``PHOTO_INDEX_METHODS`` order,
    comes back and serves the others."""
    fold_of = np.random.default_rng(seed).permutation(len(train)) % folds
    if scored is not None:
        fold_of[np.setdiff1d(np.arange(len(train)), scored)] = -1
    in_sample = fold_of[fold_of >= 0]
    share = (folds - 1) / folds

    def longest_first(tasks: list[tuple[int | None, str]]) -> list[tuple[int | None, str]]:
        return sorted(tasks, key=lambda t: -FIT_COST.get(t[1], 10) * (
            1.0 if t[0] is None else share))

    tasks = longest_first([(fold, name) for fold in range(folds) for name in methods])
    if finals:
        tasks += longest_first([(None, name) for name in methods])
    if text is not None and "semantic" in methods:
        # the text store filled once, before the fits would each embed what it lacks, and
        # in a pool's worker where there is a pool: the text encoder (torch and MiniLM:
        # +0.6 GB resident, bench/train.py on 29,144 photos) stays out of the driver
        for _ in (engine or LocalEngine()).map(_fill_text_store, [vocab], text=text):
            pass
    # the text resources (~10 MB pickled) travel with the semantic method's tasks alone
    items = [(fold, name, text if name == "semantic" else None) for fold, name in tasks]
    route = routed is not None and n_communities(train) > 1
    # one final fit sends its photo indexes to the driver; the others borrow them here
    owner = next((m for m in PHOTO_INDEX_METHODS if m in methods), None)
    done = (engine or LocalEngine()).map(_fit_task, items,
                                          progress="fits" if progress else None, train=train,
                                          vocab=vocab, fold_of=fold_of, seed=seed,
                                          **({"routed": True} if route else {}),
                                          **({"index_owner": owner} if owner else {}),
                                          **({"spill": spill} if spill else {}))
    out_of_fold: dict[str, np.ndarray] = {}
    fitted: dict[str, Method] = {}
    alongside, waiting = None, folds * len(methods)  # out-of-fold fits still to come
    for (fold, name), (result, seconds) in zip(tasks, done, strict=True):
        if cpu_seconds is not None:
            cpu_seconds[name] = round(cpu_seconds.get(name, 0.0) + seconds, 1)
        if fold is None:
            fitted[name] = with_text(result, text)
            continue
        if route:
            result, own = result
            routed.setdefault(name, np.zeros((len(in_sample), len(vocab)), np.float32))[
                in_sample == fold] = own
        out_of_fold.setdefault(name, np.zeros((len(in_sample), len(vocab)), np.float32))[
            in_sample == fold] = result
        waiting -= 1
        if not waiting and meanwhile is not None:
            alongside = meanwhile({m: out_of_fold[m] for m in methods})
    for name, method in fitted.items():
        if name != owner and name in PHOTO_INDEX_METHODS:
            lend_photo_indexes(fitted[owner], method)
    return ({m: out_of_fold[m] for m in methods}, [fitted[m] for m in methods if finals],
            alongside)


def with_text(method: Method, text: TextResources | None) -> Method:
    """``method`` (each community's, when gated) pointed at ``text``. A fit method needs
    its text resources no more: a final fit's semantic method leaves its worker without
    them (None) and takes the driver's, where each returned a copy of its own to the
    driver (the segmenter's dictionaries: over a million small objects)."""
    for owner in getattr(method, "inner", [method]):
        if hasattr(owner, "resources"):
            owner.resources = text
    return method


#: the methods whose fit indexes the training photos (each community's, when gated): the
#: same photos, so one index a community serves the three, and the artifact stores it once.
#: The first of them in this order that trains owns it: its final fit sends its indexes to
#: the driver, the others' leave theirs in their workers and borrow the owner's (at 100,000
#: photos an index is 0.5 GB: the driver held two at once, docs/scaling.md)
PHOTO_INDEX_METHODS = ("knn", "semantic", "graph")


def photo_index_slots(method: Method) -> Iterator[tuple[Any, str]]:
    """(community's method, attribute) of each of ``method``'s photo indexes: its
    ``photo_index_attribute``, each community's when gated."""
    for part in getattr(method, "inner", [method]):
        attribute = getattr(part, "photo_index_attribute", None)
        if attribute is not None:
            yield part, attribute


def lend_photo_indexes(owner: Method, borrower: Method) -> None:
    """Each community's part of ``borrower`` gets ``owner``'s index of the same
    community's photos, in place of the number of rows its fit indexed (what its worker
    sent of the index it dropped): ValueError where they differ."""
    lent = [getattr(part, attribute) for part, attribute in photo_index_slots(owner)]
    slots = list(photo_index_slots(borrower))
    if len(slots) != len(lent):
        raise ValueError(f"{borrower.name} holds {len(slots)} photo indexes, "
                         f"{owner.name} {len(lent)}: not the same communities")
    for (part, attribute), index in zip(slots, lent, strict=True):
        if getattr(part, attribute) != index.size:
            raise ValueError(f"{borrower.name} indexed {getattr(part, attribute)} photos "
                             f"where {owner.name} indexed {index.size}: not the same photos")
        setattr(part, attribute, index)


def out_of_fold_scores(train: PhotoSet, vocab: Sequence[str], methods: Sequence[str],
                       folds: int, seed: int, text: TextResources | None = None,
                       engine: Engine | None = None) -> dict[str, np.ndarray]:
    """Every method's out-of-fold scores of every training photo (``folds_and_finals``)."""
    return folds_and_finals(train, vocab, methods, folds, seed, text, engine, finals=False)[0]


def _fill_text_store(vocab: Sequence[str], text: TextResources) -> None:
    """The text vectors the semantic fits of ``vocab`` read, computed where missing."""
    SemanticMethod(class_names(), text).texts(vocab)


def _fit_task(task: tuple[int | None, str, TextResources | None], train: PhotoSet,
              vocab: Sequence[str], fold_of: np.ndarray, seed: int, routed: bool = False,
              index_owner: str | None = None, spill: Path | None = None,
              ) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray] | Method, float]:
    """task (fold, method, its text resources): (fold None: the method fit on every photo,
    its photo indexes left here unless it is the ``index_owner`` (or there is none), sent
    as files in ``spill`` when given; a fold: the scores of that fold by the method fit on
    the others, with ``routed`` also those with each photo routed to its own community;
    the CPU seconds it took)."""
    fold, name, text = task
    started = time.process_time()
    with one_thread():
        (method,) = make_methods([name], seed, text, n_communities(train))
        if fold is None:
            method.fit(train, vocab)
            borrower = index_owner not in (None, name)  # the owner's come instead
            for part, attribute in photo_index_slots(method):
                if borrower:  # its size alone goes back, checked against the owner's
                    setattr(part, attribute, getattr(part, attribute).size)
                else:
                    getattr(part, attribute).spill_to(spill)
            return with_text(method, None), time.process_time() - started
        method.fit(train.subset(np.flatnonzero(fold_of != fold)), vocab)
        held = train.subset(np.flatnonzero(fold_of == fold))
        scores = method.scores(held)
        if routed:
            own = np.eye(n_communities(train), dtype=np.float32)[held.communities]
            scores = (scores, method.scores(held.routed(own)))
        return scores, time.process_time() - started


def fitted_methods(train: PhotoSet, vocab: Sequence[str], methods: Sequence[str], seed: int,
                   text: TextResources | None = None, engine: Engine | None = None,
                   ) -> list[Method]:
    """Every method fit on all the training photos (side by side on an ``engine``)."""
    fold_of = np.zeros(len(train), dtype=np.int64)
    return [with_text(method, text) for method, _ in (engine or LocalEngine()).map(
        _fit_task, [(None, name, text) for name in methods], train=train, vocab=vocab,
        fold_of=fold_of, seed=seed)]


@contextmanager
def one_thread() -> Iterator[None]:
    """A fit runs on one thread (torch's and the BLAS's), on whichever engine: both split a
    large sum (a bias's gradient over the batch, a logistic regression's Xᵀv) into one chunk
    a thread, so the bits of a fitted model depend on the thread count. An engine gains
    speed by running fits side by side instead (bench/scale.py)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def fit_fusion(train: PhotoSet, vocab: Sequence[str], methods: Sequence[str], folds: int,
               seed: int, text: TextResources | None = None) -> Fusion:
    """Linear fusion weights from out-of-fold scores of the training photos."""
    return Fusion.fit(out_of_fold_scores(train, vocab, methods, folds, seed, text),
                      [frozenset(ids) for ids in train.hashtags])


def fit_fusions(train: PhotoSet, vocab: Sequence[str], methods: Sequence[str], folds: int,
                seed: int, text: TextResources | None = None,
                ) -> tuple[Fusion, RankFusion | None]:
    """The linear fusion and the learned one (RankFusion; None for a single method), both
    from one set of out-of-fold scores of the training photos."""
    scores = out_of_fold_scores(train, vocab, methods, folds, seed, text)
    truth = [frozenset(ids) for ids in train.hashtags]
    ranker = RankFusion.fit(scores, truth, seed) if len(scores) > 1 else None
    return Fusion.fit(scores, truth), ranker


def run_image2tag(train_posts: Sequence[Post], test_posts: Sequence[Post], store: FeatureStore,
                  ignore: frozenset[str] = frozenset(), methods: Sequence[str] = METHODS,
                  min_count: int = 3, max_vocab: int = 1000, seed: int = 0, folds: int = 5,
                  progress: bool = True, text: TextResources | None = None,
                  ) -> Image2TagResult:
    train, vocab = training_photos(train_posts, store, ignore, min_count, max_vocab, progress)
    test_kept, test_photos = readable_photos(without_ignored(test_posts, ignore), store, progress)
    test_ids = [frozenset(vocab.encode(p.hashtags)) for p in test_kept]
    test_rows = np.array([bool(ids) for ids in test_ids], dtype=bool)
    test = test_photos.subset(np.flatnonzero(test_rows))
    truth = [ids for ids in test_ids if ids]
    log.info("image2tag: vocabulary %d hashtags; %d training photos, %d test photos with a "
             "hashtag in it (%d without, not scored)", len(vocab), len(train), len(test),
             int((~test_rows).sum()))
    if not truth:
        raise ValueError("no test photo has a hashtag in the training vocabulary")

    fusion, ranker = fit_fusions(train, vocab.terms, methods, folds, seed, text)

    results, seconds, test_scores = {}, {}, {}
    for method in make_methods(methods, seed, text):
        started = time.perf_counter()
        method.fit(train, vocab.terms)
        test_scores[method.name] = method.scores(test)
        seconds[method.name] = round(time.perf_counter() - started, 2)
        results[method.name] = photo_metrics(test_scores[method.name], truth)
        log.info("%s: %s", method.name, {k: round(v, 2) for k, v in results[method.name].items()})
    fused = {"fusion": fusion.combine(test_scores)}
    if ranker is not None:
        fused["learned_fusion"] = ranker.combine(test_scores)
    for name, scores in fused.items():
        results[name] = photo_metrics(scores, truth)
    vectors = hashtag_word_vectors(train, vocab.terms, seed)
    similarity = {name: {k: round(v, 3 if k == "cos" else 2) for k, v in
                         set_similarity(top_k(scores, 5), truth, vectors).items()}
                  for name, scores in {**test_scores, **fused}.items()}
    best = max(test_scores, key=lambda name: results[name]["R@5"])
    agreement = {name: round(top5_agreement(scores, test_scores[best]), 3)
                 for name, scores in test_scores.items()}
    log.info("top-5 agreement with %s: %s", best, agreement)
    seconds["fusion"] = round(sum(seconds.values()), 2)
    results = {name: {k: round(v, 2) for k, v in row.items()} for name, row in results.items()}
    return Image2TagResult(len(train), len(test), vocab.terms, results, seconds, fusion.weights,
                           fusion.mode, agreement, similarity)
