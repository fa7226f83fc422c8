"""Training the photo → hashtag models once, for serving.

``train_image_models`` fits every method on the training photos, fits the fusion weights
on out-of-fold scores, and writes one versioned, checksummed artifact directory (plain
arrays and JSON: shared/artifacts.py). services/image_models.py verifies it and rebuilds the
methods without retraining and without unpickling anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from commands.engine import Engine
from commands.experiments.image2tag import (
    METHODS,
    Community,
    community_photos,
    folds_and_finals,
    one_thread,
)
from services.image_models import KIND, OUT_OF_FOLD_PHOTOS, OUT_OF_FOLD_SCORES, ImageModels
from services.recommender.model import Fusion, RankFusion
from services.recommender.user_side import min_max_rows
from services.vision.store import FeatureStore
from services.word.semantic import TextResources
from shared.artifacts import ArtifactWriter, file_blocks, fsync_directory
from shared.backbone import vision_model_id
from shared.config import fit_passes_limit, fit_sample_limit
from shared.data.readers import Post
from shared.data.split import fit_sample

log = logging.getLogger(__name__)


def train_image_models(posts: Sequence[Post], store: FeatureStore, out: Path,
                       ignore: frozenset[str] = frozenset(), methods: Sequence[str] = METHODS,
                       min_count: int = 3, max_vocab: int = 1000, seed: int = 0,
                       folds: int = 5, progress: bool = True,
                       text: TextResources | None = None,
                       engine: Engine | None = None, about: dict | None = None,
                       ) -> ImageModels:
    """One photo set's models (``train_communities`` with one community)."""
    return train_communities([Community("photos", posts, ignore)], store, out, methods,
                             min_count, max_vocab, seed, folds, progress, text,
                             about=about, engine=engine)


def train_communities(communities: Sequence[Community], store: FeatureStore, out: Path,
                      methods: Sequence[str] = METHODS, min_count: int = 3,
                      max_vocab: int = 1000, seed: int = 0, folds: int = 5,
                      progress: bool = True, text: TextResources | None = None,
                      about: dict | None = None, engine: Engine | None = None,
                      ) -> ImageModels:
    """Fits every method on the photos of every community (their vocabularies' union), the
    linear and the learned fusion on out-of-fold scores, and writes everything under
    ``out/<version>/``; ``about`` joins the manifest (the recipe: data, hold-out).
    ``engine``: where feature extraction and the independent fits run (commands/engine.py);
    the artifact does not depend on it."""
    out.mkdir(parents=True, exist_ok=True)
    sweep_scratch(out)
    # the photos' features go to a file beside the versions, mapped read-only: a driver
    # with a pool holds none of them (9.1 KB a photo; docs/scaling.md), its workers map it
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=out))
    try:
        return _train_communities(communities, store, out, methods, min_count, max_vocab,
                                  seed, folds, progress, text, about, engine, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_communities(communities: Sequence[Community], store: FeatureStore, out: Path,
                       methods: Sequence[str], min_count: int, max_vocab: int, seed: int,
                       folds: int, progress: bool, text: TextResources | None,
                       about: dict | None, engine: Engine | None, scratch: Path,
                       ) -> ImageModels:
    started, started_at = time.perf_counter(), time.time()
    stages: dict[str, float] = {}  # wall seconds of each stage, kept in the manifest
    cpu_seconds: dict[str, float] = {}  # each method's fits, CPU seconds
    train, terms, vocabularies = community_photos(communities, store, min_count, max_vocab,
                                                  progress, engine, scratch)
    stages["photos"] = time.perf_counter() - started
    # the fusions learn from out-of-fold scores of a seeded sample of the photos, not of
    # every one: 47 KB of scores a photo (7 methods × the vocabulary) would grow the
    # driver with the collection (docs/scaling.md)
    scored = fit_sample(len(train), seed)
    truth = [frozenset(train.hashtags[i]) for i in scored]
    sample_communities = train.communities[scored]

    routed: dict[str, np.ndarray] = {}  # out of fold, each photo as its own community's

    def fusions(scores: dict[str, np.ndarray],
                ) -> tuple[Fusion, RankFusion | None, dict[str, RankFusion]]:
        fusion_started = time.perf_counter()
        # one thread: the pool's final fits hold the cores meanwhile. With the BLAS's own
        # two threads beside them, 462 photos trained in 72 s at a 2.7 GiB peak; with one,
        # 61 s at 1.9 GiB (bench/train.py; each OpenBLAS thread keeps its buffers)
        with one_thread():
            fusion = Fusion.fit(scores, truth)
            ranker = RankFusion.fit(scores, truth, seed) if len(methods) > 1 else None
            # each community's own learned fusion, on its photos scored as their
            # community's: what serves a request that names its community
            own = {} if ranker is None or not routed else {
                community.name: RankFusion.fit(
                    {m: s[rows] for m, s in routed.items()}, [truth[i] for i in rows], seed)
                for number, community in enumerate(communities)
                for rows in [np.flatnonzero(sample_communities == number)]}
        stages["fusion"] = time.perf_counter() - fusion_started  # within "fits"
        return fusion, ranker, own

    # the fusions are fit here while the pool runs the final fits
    scores, finals, (fusion, ranker, community_rankers) = folds_and_finals(
        train, terms, methods, folds, seed, text, engine, progress=progress,
        cpu_seconds=cpu_seconds, meanwhile=fusions, routed=routed,
        scored=None if len(scored) == len(train) else scored,
        # the photo indexes come by file from a local pool's workers (a Ray cluster's
        # workers share no folder with the driver)
        spill=scratch if getattr(engine, "name", "local") == "local" else None)
    stages["fits"] = time.perf_counter() - started - stages["photos"]
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + content_digest(terms, train.features)[:8]
    with publish_version(out, version) as folder:  # whole or not at all
        writer = ArtifactWriter(folder)
        fitted = {}
        for method in finals:
            method.save(writer)
            fitted[method.name] = method
        fusion.save(writer)
        if ranker is not None:
            ranker.save(writer)
        for name, own in community_rankers.items():
            own.save(writer.scoped(f"community/{name}"))
        # What stands on this model and is fit later (the recommender's user weight,
        # services/user/train.py) needs photo scores from a model that never saw the photo:
        # the fused out-of-fold scores of every training photo, each row scaled to [0, 1] as
        # the recommender scales them.
        fused = ranker.combine(scores) if ranker is not None else fusion.combine(scores)
        writer.array(OUT_OF_FOLD_SCORES, min_max_rows(fused).astype(np.float16))
        writer.json(OUT_OF_FOLD_PHOTOS, [train.keys[i] for i in scored])
        writer.json("vocabulary", list(terms))
        writer.close({"kind": KIND, "version": version, "methods": list(methods),
                      "vision_model": vision_model_id(), "n_train": len(train), "seed": seed,
                      "fit_sample": {"photos": len(scored), "limit": fit_sample_limit()},
                      # capped fits (a smoke run, a memory measurement) say so in the model
                      **({"fit_passes": passes} if (passes := fit_passes_limit()) else {}),
                      **({"text_model": text.model_id} if text is not None and text.model_id
                         else {}),
                      "communities": [{"name": c.name, "ignored": sorted(c.ignore),
                                       "photos": int((train.communities == i).sum()),
                                       "vocabulary": len(vocabularies[c.name])}
                                      for i, c in enumerate(communities)],
                      "fusion": "rank" if ranker is not None else fusion.mode,
                      "training": {"stage_seconds": {k: round(v, 1) for k, v in stages.items()},
                                   "fit_cpu_seconds": cpu_seconds,
                                   "started_at": round(started_at, 3),
                                   "engine": getattr(engine, "name", "local"),
                                   "workers": getattr(engine, "workers", 1)},
                      **(about or {})}, durable=True)
    log.info("trained %s on %d photos of %d communities in %.0f s -> %s", list(methods),
             len(train), len(communities), time.perf_counter() - started, out / version)
    return ImageModels(version, terms, fitted, fusion, out / version, ranker,
                       tuple(c.name for c in communities), community_rankers)


#: a training's scratch folder beside the versions: .tmp-photos-<its pid>-<random>
SCRATCH_PREFIX = ".tmp-photos-"
#: a version being written: .tmp-version-<the training's pid>-<version>
UNPUBLISHED_PREFIX = ".tmp-version-"


def sweep_scratch(out: Path) -> None:
    """Removes the scratch folders and half-written versions of trainings no longer
    running (killed before their ``finally``: SIGKILL, the OOM killer), each with a line
    saying so; a running one's, whose pid is alive, stays."""
    for prefix, what in ((SCRATCH_PREFIX, "the scratch"),
                         (UNPUBLISHED_PREFIX, "the half-written version")):
        for folder in out.glob(f"{prefix}*"):
            pid = folder.name.removeprefix(prefix).split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                log.warning("removing %s: %s of a training (pid %s) that ended before "
                            "cleaning up", folder, what, pid)
                shutil.rmtree(folder, ignore_errors=True)


def content_digest(terms: Sequence[str], features: np.ndarray) -> str:
    """sha256 of the vocabulary and the features' bytes; a memory-mapped file's are read
    from the file, a block at a time, so the driver never maps them all in."""
    digest = hashlib.sha256("\n".join(terms).encode())
    blocks = file_blocks(features)
    for block in blocks if blocks is not None else [np.ascontiguousarray(features).data]:
        digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def publish_version(out: Path, version: str) -> Iterator[Path]:
    """A temporary folder beside ``out/version`` to write a model into, renamed to
    ``version`` once the block ends well (and removed if it does not): a reader never
    sees a half-written version, whatever stops training."""
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / f"{UNPUBLISHED_PREFIX}{os.getpid()}-{version}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    os.replace(temporary, out / version)
    fsync_directory(out)


#: the search hashtags the Instagram posts were collected by: most posts carry their own
#: (HARRISON's: 91 %), so as labels they would teach the collection rather than the photo,
#: and as the most frequent tags they would top every prior (``search_tag_report`` logs
#: each one's share and rank at training)
INSTAGRAM_SEARCH_TAGS = frozenset({"animals", "cars", "fitness", "food", "selfie", "travel"})
#: the default model's communities: (name, data set, collection artefacts)
DEFAULT_COMMUNITIES = (("instagram", "instagram:instagram", INSTAGRAM_SEARCH_TAGS),
                       ("food", "food:food", frozenset()),
                       ("flickr", "dcmr:mirflickr25k", frozenset()))
#: tag-only hashtag lists: hashtag knowledge (co-occurrence, words) without photos
DEFAULT_CORPORA = ("harrison:harrison", "dcmr:mirflickr25k")
#: running social-media text whose words teach the hashtag segmenter (shared/text.py)
SEGMENTER_TEXT = "howyoutag:howyoutag"
DEFAULT_METHODS = ("frequency", "knn", "mlp", "word", "graph", "semantic", "autorec_masked")


def held_out_split(posts: Sequence[Post], hold_out: int | None,
                   ) -> tuple[list[Post], list[Post]]:
    """(training, held-out) posts: the seeded 80/20 split ``evaluate image2tag`` makes of a
    data set (same seed, same order, same split), or every post when ``hold_out`` is None."""
    from shared.data.split import seeded_split

    return seeded_split(posts, hold_out) if hold_out is not None else (list(posts), [])


def search_tag_report(posts: Sequence[Post], tags: frozenset[str]) -> dict[str, dict]:
    """For each collection hashtag: the share of the posts carrying it, and its rank among
    all the posts' hashtags by count (what it would do to a prior left in)."""
    from collections import Counter

    counts = Counter(t for p in posts for t in set(p.hashtags))
    ranked = {t: rank for rank, (t, _) in enumerate(counts.most_common(), start=1)}
    return {t: {"share": round(counts[t] / max(len(posts), 1), 3), "rank": ranked.get(t)}
            for t in sorted(tags)}


def hashtag_knowledge(corpora: Sequence[str], hold_out: int | None = None,
                      already_read: dict[str, list[Post]] | None = None,
                      store_dir: Path | None = None) -> TextResources:
    """The semantic method's text resources: the hashtag lists of ``corpora`` (a corpus
    that is also a photo set contributes its training split only: ``hold_out``), and the
    tweets' words for the segmenter."""
    from services.word.semantic import text_resources
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    lists = []
    for spec in corpora:
        posts = (already_read or {}).get(spec) or held_out_split(
            normalize_post_hashtags(read_posts(spec)), hold_out)[0]
        lists += [p.hashtags for p in posts]
    try:
        tweets = [p.text or "" for p in read_posts(SEGMENTER_TEXT)]
    except FileNotFoundError:
        log.warning("%s is missing: the segmenter uses English frequencies alone",
                    SEGMENTER_TEXT)
        tweets = []
    return text_resources(lists, tweets, store_dir=store_dir)


def check_fit_settings() -> None:
    """Refuses a bad $HASHREC_FIT_PASSES or $HASHREC_FIT_SAMPLE (one line naming it) before
    any photo is read or embedded: `hashrec train` and `hashrec serve`'s first training."""
    fit_passes_limit(), fit_sample_limit()


def train_default(out: Path, store: FeatureStore, hold_out: int | None = None,
                  communities: Sequence[tuple[str, str, frozenset[str]]] = DEFAULT_COMMUNITIES,
                  corpora: Sequence[str] = DEFAULT_CORPORA,
                  methods: Sequence[str] = DEFAULT_METHODS, seed: int = 0, folds: int = 3,
                  progress: bool = True, engine: Engine | None = None) -> ImageModels:
    """The served default: every shipped photo set as a community, the tag-only corpora as
    hashtag knowledge (the semantic method's outside hashtags and counts), the tweets'
    words for the segmenter. ``hold_out``: keep the seeded 20 % of each data set (photo
    sets and corpora alike) out, for `hashrec evaluate served`."""
    from shared.config import data_root
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    check_fit_settings()
    members, kept_by_spec = [], {}
    for name, spec, ignore in communities:
        posts, _ = held_out_split(normalize_post_hashtags(read_posts(spec)), hold_out)
        kept_by_spec[spec] = posts
        if ignore:
            log.info("%s: collection hashtags %s", name, search_tag_report(posts, ignore))
        members.append(Community(name, posts, ignore))
    text = hashtag_knowledge(corpora, hold_out, kept_by_spec)
    about = {"recipe": "default", "data": [spec for _, spec, _ in communities],
             "corpora": list(corpora), "data_root": str(data_root()),
             "hold_out": None if hold_out is None else {"seed": hold_out, "share": 0.2}}
    return train_communities(members, store, out, methods, seed=seed, folds=folds,
                             progress=progress, text=text, about=about, engine=engine)


def train_from_spec(spec: str, out: Path, ignore: frozenset[str] = frozenset(),
                    min_count: int = 3, seed: int = 0,
                    methods: Sequence[str] | None = None,
                    engine: Engine | None = None) -> ImageModels:
    """Reads and normalises a data set (FORMAT:PATH), then ``train_image_models`` with the
    shared feature store under $HASHREC_MODELS/features."""
    from shared.config import models_dir
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    check_fit_settings()
    methods = methods or METHODS
    text = hashtag_knowledge(("harrison:harrison",)) if "semantic" in methods else None
    # the manifest names the set it trained on in full: `evaluate served` refuses to
    # score its photos as held out (it scored them, an outside try)
    return train_image_models(normalize_post_hashtags(read_posts(spec)),
                              FeatureStore(models_dir() / "features"), out, ignore,
                              methods=methods, min_count=min_count, seed=seed, text=text,
                              engine=engine,
                              about={"recipe": "single", "data": [spec], "hold_out": None})
