"""Shared fixtures: the real data sets beside the repository.

Under pytest-xdist (scripts/test.sh runs a worker a core) each worker has its own session,
so what is costly and the same for all of them, the photos' features and the stack's
trained models, is made once in a folder the workers share, under a file lock."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from shared.config import data_root
from tests.training import pool


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "mirflickr25k").is_dir():
        raise RuntimeError(f"the shipped data sets are missing at {root}: "
                           "set HASHREC_DATA_ROOT to their folder")
    return root


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker gets its share of the cores for its numeric threads (torch, BLAS,
    the services it starts): two workers of two threads each on two cores would fight."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        from shared.batching import usable_cores

        threads = str(max(1, usable_cores() // workers))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "HASHREC_THREADS"):
            os.environ.setdefault(name, threads)
        import torch

        torch.set_num_threads(int(threads))


#: the slowest modules (seconds on 2 workers, 2026-12-06), first, so that xdist's workers,
#: which take the next module as they free up, end together
SLOWEST_FIRST = ("test_engine_ray", "test_engine", "test_train", "test_processes",
                 "test_serve_lifecycle", "test_stack", "test_autorec", "test_served",
                 "test_communities",
                 "test_image2tag", "test_supervision", "test_deploy",
                 "test_recommender_service", "test_zhong", "test_user_model",
                 "test_gateway", "test_user_weight", "test_user_journal")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every xdist worker of this run sees (their base temps share a parent);
    serially, one in the session's own base temp."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / "shared"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def feature_store(shared_dir: Path):
    """One real feature store (the CPU vision model) for the session's photo tests; its
    entries are written atomically, so the workers share it."""
    from services.vision.model import VisionModel
    from services.vision.store import FeatureStore

    return FeatureStore(shared_dir / "features", VisionModel(device="cpu"))


@pytest.fixture(scope="session")
def mirflickr_labelled(data_dir: Path, feature_store):
    """MIRFlickr's 584 photos with their 24 content labels as the tags to recommend: 400
    train, 184 test. Content labels, unlike most hashtags, are decided by the photo."""

    from shared.data.normalize import Vocabulary
    from shared.data.readers import read_posts
    from shared.photos import PhotoSet

    posts = [p for p in read_posts(f"dcmr:{data_dir / 'mirflickr25k'}")
             if p.image is not None and p.labels]
    embedding, ok = feature_store.embed_paths([p.image for p in posts], progress=False)
    assert ok.all() and len(posts) == 584
    vocab = Vocabulary.build([p.labels for p in posts[:400]])
    ids = [vocab.encode(p.labels) for p in posts]
    train = PhotoSet(embedding.features[:400], embedding.probabilities[:400], ids[:400])
    test = PhotoSet(embedding.features[400:], embedding.probabilities[400:])
    return train, test, [frozenset(i) for i in ids[400:]], vocab


@pytest.fixture(scope="session")
def food_posts(data_dir: Path) -> list:
    """The food set's posts, hashtags normalised (the engine tests train on its first)."""
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    return normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, shared_dir: Path,
          feature_store) -> Iterator[dict]:
    """The five services over real sockets on one event loop in a thread: photo models
    trained on 160 food photos (with the semantic method), a user model on 30 simulated
    users with its recommender weight fitted against those; channels to each. Shared by
    the stack, gateway and page tests."""
    import grpc

    from services.graph.server import serve as serve_graph
    from services.image_models import load_image_models
    from services.recommender.server import serve as serve_recommender
    from services.user.server import serve as serve_user
    from services.vision.server import serve as serve_vision
    from services.word.server import serve as serve_word
    from shared.grpc_server import CHANNEL_OPTIONS
    from tests.servers import LoopThread

    model = feature_store.model
    with FileLock(shared_dir / "stack.lock"):
        made = shared_dir / "stack.json"
        if not made.exists():
            made.write_text(json.dumps(_train_stack_models(shared_dir / "stack", data_dir,
                                                           feature_store)))
        paths = json.loads(made.read_text())
    trained = load_image_models(Path(paths["models"]))
    user_dir = Path(paths["user"])
    state = tmp_path_factory.mktemp("state")
    loop = LoopThread()
    vision = loop.call(serve_vision("127.0.0.1", 0, model))
    word = loop.call(serve_word("127.0.0.1", 0, trained.directory))
    graph = loop.call(serve_graph("127.0.0.1", 0, trained.directory))
    user = loop.call(serve_user("127.0.0.1", 0, user_dir, state))
    recommender = loop.call(serve_recommender(
        "127.0.0.1", 0, trained.directory, vision.address, word.address, graph.address,
        user.address, backend_deadline=30))
    channels = {name: grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
                for name, server in (("vision", vision), ("word", word), ("graph", graph),
                                     ("user", user), ("recommender", recommender))}
    yield {"loop": loop, "channels": channels, "trained": trained, "user_dir": user_dir,
           "state": state, "vision": vision, "word": word, "graph": graph, "user": user,
           "recommender": recommender, "model": model}
    for channel in channels.values():
        channel.close()
    for server in (recommender, user, graph, word, vision):
        loop.call(server.stop())
    loop.close()




def _train_stack_models(folder: Path, data_dir: Path, store) -> dict[str, str]:
    """The stack's photo models (160 food photos, with the semantic method) and its user
    model (30 simulated users, the weight fitted against those photo models); where they
    were written."""
    from commands.experiments.image2tag import METHODS
    from commands.train import hashtag_knowledge, train_image_models
    from services.user.model import TensorParams
    from services.user.train import train_user_model
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts
    from shared.data.simulated_users import source_posts

    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:160]
    trained = train_image_models(
        posts, store, folder / "models", methods=(*METHODS, "semantic"), min_count=2,
        folds=3, progress=False, engine=pool(),
        text=hashtag_knowledge(("harrison:harrison",), store_dir=folder / "text"))
    # Users post every photo set, and the photos the image model learned from (their
    # out-of-fold scores fit the recommender's user weight).
    sources = source_posts(data_dir)
    images = {p.image for p in posts}
    food_sources = [p for p in sources if p.image in images]
    _, user_dir = train_user_model(
        folder / "user", store, n_users=30, progress=False,
        params=TensorParams(16, 16, 4, epochs=5), sources=[*sources[::25], *food_sources],
        image_model=trained.directory)
    return {"models": str(trained.directory), "user": str(user_dir)}
