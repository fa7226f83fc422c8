"""Trained photo → hashtag models survive the trip to disk and back, verified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from commands.experiments.image2tag import METHODS, training_photos
from commands.train import train_image_models
from services.image_models import load_image_models
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from tests.training import pool


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, feature_store):
    store = feature_store  # the session's: these photos' features are computed once
    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:160]
    models = train_image_models(posts, store, tmp_path_factory.mktemp("models"),
                                ignore=frozenset({"food"}), min_count=2, folds=3,
                                progress=False, engine=pool())
    photos, _ = training_photos(posts, store, frozenset({"food"}), 2, 1000, False)
    return models, photos


def test_loaded_models_score_exactly_like_the_trained_ones(trained) -> None:
    models, photos = trained
    loaded = load_image_models(models.directory)
    assert loaded.vocabulary == models.vocabulary and "food" not in loaded.vocabulary
    assert loaded.fusion == models.fusion and loaded.version == models.version
    some = photos.subset(np.arange(20))
    fused, per_method = loaded.scores(some)
    expected_fused, expected = models.scores(some)
    assert set(per_method) == set(METHODS)
    for name in METHODS:
        np.testing.assert_allclose(per_method[name], expected[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_allclose(fused, expected_fused, rtol=1e-5, atol=1e-6)


def test_a_tampered_artifact_is_refused(trained, tmp_path: Path) -> None:
    import shutil

    models, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(models.directory, copy)
    prior = np.load(copy / "frequency" / "prior.npy")
    np.save(copy / "frequency" / "prior.npy", prior * 2)
    with pytest.raises(ValueError, match="checksum does not match"):
        load_image_models(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_image_models(copy)


def test_verify_passes_a_whole_version_and_fails_a_tampered_or_missing_one(
        trained, tmp_path: Path, capsys) -> None:
    """`hashrec verify`, the initContainer of every pod that serves a pinned version."""
    import shutil

    from commands.cli import main

    models, _ = trained
    assert main(["verify", str(models.directory), "--kind", "image-to-hashtag"]) == 0
    assert main(["verify", str(models.directory), "--kind", "user-tensor-effects"]) == 1
    assert "not 'user-tensor-effects'" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(models.directory, copy)
    prior = copy / "frequency" / "prior.npy"
    prior.write_bytes(prior.read_bytes() + b"\0")
    assert main(["verify", str(copy)]) == 1
    assert "checksum does not match" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "not-yet"), "--wait", "0.3"]) == 1
    assert "no manifest.json after 0 s" in capsys.readouterr().err


def test_cli_train_writes_a_loadable_model(tmp_path: Path, data_dir: Path, monkeypatch,
                                           capsys) -> None:
    import json

    from commands.cli import main

    monkeypatch.setenv("HASHREC_MODELS", str(tmp_path / "models"))
    posts = tmp_path / "posts.jsonl"
    food = read_posts(f"food:{data_dir / 'food'}")[:80]
    posts.write_text("".join(json.dumps({"image": str(p.image), "hashtags": list(p.hashtags)})
                             + "\n" for p in food))
    assert main(["train", "--train", f"jsonl:{posts}", "--min-count", "2"]) == 0
    written = capsys.readouterr().out.split("written to ")[1].strip()
    assert load_image_models(Path(written)).methods.keys() == set(METHODS)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("HASHREC_FIT_PASSES", "0", "HASHREC_FIT_PASSES must be at least 1, got '0'"),
    ("HASHREC_FIT_SAMPLE", "5", "HASHREC_FIT_SAMPLE must be at least 100, got 5"),
])
def test_cli_train_refuses_a_bad_fit_setting_before_reading_any_data(
        tmp_path: Path, monkeypatch, capsys, name: str, value: str, message: str) -> None:
    """One line naming the setting, before the photos are read or embedded (a data set
    that does not exist is never looked at) and before the output folder is made."""
    from commands.cli import main

    monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    assert main(["train", "--train", f"jsonl:{tmp_path / 'no-such-posts.jsonl'}",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(message)
    assert not out.exists()


def test_ctrl_c_during_training_ends_in_one_line_and_publishes_nothing(
        tmp_path: Path, data_dir: Path) -> None:
    """SIGINT to `hashrec train`'s process group while its pool fits: exit 130, one line
    saying nothing was published, no traceback, no half-written version or scratch."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    posts = tmp_path / "posts.jsonl"
    food = read_posts(f"food:{data_dir / 'food'}")[:80]
    posts.write_text("".join(json.dumps({"image": str(p.image), "hashtags": list(p.hashtags)})
                             + "\n" for p in food))
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "train", "--train", f"jsonl:{posts}",
         "--min-count", "2", "--out", str(tmp_path / "models"), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "HASHREC_MODELS": str(tmp_path / "store")})
    try:
        seen, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            seen.append(line)
            if " tasks of _fit_task on 2 processes" in line or not line:
                break
        assert any("_fit_task" in line for line in seen), "".join(seen)[-2000:]
        os.killpg(process.pid, signal.SIGINT)
        _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert "Traceback" not in rest, rest[-3000:]
    assert rest.strip().splitlines()[-1].startswith("hashrec train: interrupted; nothing was "
                                                    "published")
    assert [p.name for p in (tmp_path / "models").iterdir()] == []


def test_loaded_photo_indexes_follow_the_index_configuration(trained, monkeypatch) -> None:
    """The kNN's and the graph's neighbour indexes are built by shared/index.photo_index on
    load: above the configured size they are approximate, and still answer."""
    models, photos = trained
    monkeypatch.setenv("HASHREC_INDEX_EXACT_MAX", "50")  # 160 training photos
    loaded = load_image_models(models.directory)
    assert loaded.methods["knn"].index.kind == "ivf"
    assert loaded.methods["graph"].visual_index.kind == "ivf"
    fused, _ = loaded.scores(photos.subset(np.arange(5)))
    assert np.isfinite(fused).all()


def test_the_photo_index_trained_by_knn_graph_and_semantic_is_stored_once_and_loaded_built(
        tmp_path: Path, data_dir: Path, feature_store, monkeypatch) -> None:
    """Each method's own fit builds its IVF index of the same photos (the size calls for
    one: HASHREC_INDEX_EXACT_MAX below them), in a worker of the pool; the driver keeps
    one, the artifact holds it once, and loading reads it whole, trains nothing and hands
    all three methods one index."""
    import json

    from commands.engine import LocalEngine
    from commands.train import SCRATCH_PREFIX, hashtag_knowledge
    from shared.index import InnerProductIndex
    from shared.text import TEXT_ENCODERS

    monkeypatch.setenv("HASHREC_INDEX_EXACT_MAX", "50")  # the pool is made anew with it
    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:160]
    text = hashtag_knowledge(("harrison:harrison",), store_dir=tmp_path / "text")

    def loaded_here(*args, **kwargs) -> None:
        raise AssertionError("the text encoder loaded in the training driver")

    # the new text store's vectors are computed in a worker (spawned, not patched)
    monkeypatch.setattr(TEXT_ENCODERS["minilm"], "__init__", loaded_here)
    arrived = []  # the photo indexes that reach the driver from the pool's workers
    setstate = InnerProductIndex.__setstate__

    def unpickled(self, state: dict) -> None:
        arrived.append(state.get("_spilled"))
        setstate(self, state)

    monkeypatch.setattr(InnerProductIndex, "__setstate__", unpickled)
    models = train_image_models(
        posts, feature_store, tmp_path, ignore=frozenset({"food"}),
        methods=("knn", "graph", "semantic"), min_count=2, folds=2, progress=False,
        engine=LocalEngine(2), text=text)  # a pool, whatever the cores: a worker embeds
    # the driver keeps one of the three equal indexes the fits built, and its own text
    # resources: the semantic fit's worker sends back no copy of them
    assert any((tmp_path / "text").rglob("*.npz"))
    assert models.methods["knn"].index.kind == "ivf"
    assert models.methods["knn"].index is models.methods["graph"].visual_index \
        is models.methods["semantic"].visual_index
    assert models.methods["semantic"].resources is text
    # kNN's final fit sent it, by a file in the training's scratch folder; graph's and
    # semantic's sent none and borrowed it
    assert len(arrived) == 1 and f"{SCRATCH_PREFIX}" in arrived[0]
    manifest = json.loads((models.directory / "manifest.json").read_text())
    indexes = ("knn/features", "graph/visual_features", "semantic/visual_features")
    stored = {name: manifest.get("aliases", {}).get(f"{name}_faiss.npy", f"{name}_faiss.npy")
              for name in indexes}
    assert len(set(stored.values())) == 1 and next(iter(stored.values())) in manifest["files"]
    assert not any(name in manifest["files"] for name in
                   ("knn/features.npy", "graph/visual_features.npy",
                    "semantic/visual_features.npy"))  # no vectors beside the index
    built = []
    monkeypatch.setattr(InnerProductIndex, "_build", lambda self: built.append(self))
    loaded = load_image_models(models.directory)
    knn, graph = loaded.methods["knn"].index, loaded.methods["graph"].visual_index
    semantic = loaded.methods["semantic"].visual_index
    assert knn.kind == "ivf" and knn is graph is semantic and not built
    assert knn.setting == models.methods["knn"].index.setting
    photos, _ = training_photos(posts, feature_store, frozenset({"food"}), 2, 1000, False)
    queries = photos.subset(np.arange(10))
    np.testing.assert_allclose(loaded.methods["knn"].scores(queries),
                               models.methods["knn"].scores(queries), rtol=1e-5, atol=1e-6)
    # what a worker's final semantic fit sends back: the method without the resources
    from commands.experiments.image2tag import _fit_task

    sent, _ = _fit_task((None, "semantic", text), photos, models.vocabulary,
                        np.zeros(len(photos), np.int64), seed=0)
    assert sent.resources is None and sent.weights is not None


def test_the_training_photos_are_written_to_a_scratch_file_and_mapped_not_held(
        tmp_path: Path, data_dir: Path, feature_store, monkeypatch) -> None:
    """The driver's photos: the same rows of two communities (one with a photo that does
    not decode) whether held or streamed from the store and mapped read-only from the
    scratch file (what the driver's memory gains is bench/train.py's); the version's
    digest read from the file is the held bytes'; and training leaves no scratch folder
    behind, its own or one a killed training left."""
    import hashlib
    import os
    from dataclasses import replace

    from commands.experiments import photos as streamed
    from commands.experiments.photos import Community, community_photos
    from commands.train import content_digest

    food = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a photo")
    communities = [Community("a", [*food[:30], replace(food[30], image=broken), *food[31:60]],
                             frozenset({"food"})),
                   Community("b", food[60:110], frozenset({"food"}))]
    held, terms, _ = community_photos(communities, feature_store, 2, 1000, False)
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(streamed, "STREAM_CHUNK", 7)  # streamed from the store 7 at a time
    mapped, mapped_terms, _ = community_photos(communities, feature_store, 2, 1000, False,
                                               scratch=tmp_path / "scratch")
    assert isinstance(mapped.features, np.memmap) and not mapped.features.flags.writeable
    assert mapped_terms == terms and mapped.hashtags == held.hashtags
    np.testing.assert_array_equal(mapped.features, held.features)
    np.testing.assert_array_equal(mapped.probabilities, held.probabilities)
    np.testing.assert_array_equal(mapped.communities, held.communities)
    assert str(broken) not in held.keys and str(broken) not in mapped.keys  # left out
    assert content_digest(terms, mapped.features) == hashlib.sha256(
        "\n".join(terms).encode() + held.features.tobytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == [
        "features.npy", "probabilities.npy"]  # each community's stream removed once read
    killed = tmp_path / "models" / ".tmp-photos-4194304-x"  # a pid above pid_max: gone
    killed.mkdir(parents=True)
    running = tmp_path / "models" / f".tmp-photos-{os.getppid()}-y"  # a live training's
    running.mkdir()
    half_written = tmp_path / "models" / ".tmp-version-4194304-20260101-000000-x"
    half_written.mkdir()  # SIGKILLed while it wrote its model
    writing = tmp_path / "models" / f".tmp-version-{os.getppid()}-20260101-000000-y"
    writing.mkdir()
    models = train_image_models(food[:80], feature_store, tmp_path / "models",
                                ignore=frozenset({"food"}), methods=("frequency", "knn"),
                                min_count=2, folds=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(
        [models.directory.name, running.name, writing.name])


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_the_mlps_numpy_scores_are_the_trained_torch_networks(loss: str) -> None:
    """Serving scores the MLP in numpy from its arrays; they must be what the network torch
    trained answers (dropout off)."""
    import torch

    from services.recommender.model import MlpMethod
    from shared.photos import PhotoSet

    rng = np.random.default_rng(0)
    features = rng.normal(size=(80, 32)).astype(np.float32)
    hashtags = [sorted(set(rng.integers(0, 12, size=3).tolist())) for _ in range(80)]
    photos = PhotoSet(features, np.zeros((80, 5), np.float32), hashtags)
    method = MlpMethod(loss=loss, hidden=16, max_epochs=20)
    method.fit(photos, [f"t{i}" for i in range(12)])
    network = method._network(32, 12)
    network.load_state_dict({key: torch.from_numpy(array)
                             for key, array in zip(method.KEYS, method.layers, strict=True)})
    with torch.no_grad():
        logits = network.eval()(torch.from_numpy(method._standardized(features)))
    expected = (torch.softmax(logits, dim=1) if loss == "softmax"
                else torch.sigmoid(logits)).numpy()
    np.testing.assert_allclose(method.scores(photos), expected, rtol=1e-5, atol=1e-6)


def test_the_fusions_learn_from_a_seeded_sample_of_the_photos_when_there_are_more(
        tmp_path: Path, data_dir: Path, feature_store, monkeypatch) -> None:
    """$HASHREC_FIT_SAMPLE bounds the out-of-fold scores the driver holds (and the gate's
    photos); every photo still trains the methods."""
    import json

    from commands.experiments.image2tag import folds_and_finals
    from services.image_models import out_of_fold_scores

    monkeypatch.setenv("HASHREC_FIT_SAMPLE", "100")
    monkeypatch.setenv("HASHREC_FIT_PASSES", "2")  # a capped training says so, too
    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:160]
    models = train_image_models(posts, feature_store, tmp_path, ignore=frozenset({"food"}),
                                methods=("frequency", "knn"), min_count=2, folds=3,
                                progress=False)
    manifest = json.loads((models.directory / "manifest.json").read_text())
    assert manifest["fit_sample"] == {"photos": 100, "limit": 100}
    assert manifest["fit_passes"] == 2
    assert manifest["n_train"] > 100
    _, keys, scaled = out_of_fold_scores(models.directory)
    assert len(keys) == len(scaled) == 100
    # the sampled rows are scored out of fold; the rest train every fold's methods
    photos, vocabulary = training_photos(posts, feature_store, frozenset({"food"}), 2, 1000,
                                         False)
    sample = np.arange(0, len(photos), 2)[:50]
    scores, _, _ = folds_and_finals(photos, vocabulary.terms, ["frequency"], 3, 0,
                                    finals=False, scored=sample)
    fold_of = np.random.default_rng(0).permutation(len(photos)) % 3
    for at, row in enumerate(sample[:5]):
        others = np.flatnonzero(~np.isin(np.arange(len(photos)), sample[
            fold_of[sample] == fold_of[row]]))
        prior = np.zeros(len(vocabulary.terms))
        for i in others:
            prior[list(photos.hashtags[i])] += 1 / len(others)
        np.testing.assert_allclose(scores["frequency"][at], prior, rtol=1e-5, atol=1e-7)
    monkeypatch.setenv("HASHREC_FIT_SAMPLE", "5")
    with pytest.raises(ValueError, match="HASHREC_FIT_SAMPLE must be at least 100"):
        train_image_models(posts, feature_store, tmp_path, methods=("frequency",))


def test_graph_serves_the_photo_index_of_each_community_knns_final_fit_sent(
        data_dir: Path, feature_store, monkeypatch) -> None:
    """kNN and graph index the same photos of each community: in a pool, kNN's final fit
    sends its index of each community to the driver, graph's sends none, and graph's
    community methods serve kNN's index of their own community's photos (one of other
    photos is refused)."""
    from commands.engine import LocalEngine
    from commands.experiments.image2tag import folds_and_finals
    from commands.experiments.photos import Community, community_photos
    from shared.index import InnerProductIndex, l2_normalized, photo_index

    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:120]
    photos, terms, _ = community_photos([Community("a", posts[:70]), Community("b", posts[70:])],
                                        feature_store, 2, 1000, progress=False)
    arrived = []  # the photo indexes unpickled here, by size
    setstate = InnerProductIndex.__setstate__

    def unpickled(self, state: dict) -> None:
        arrived.append(state["size"])
        setstate(self, state)

    monkeypatch.setattr(InnerProductIndex, "__setstate__", unpickled)
    _, (graph, knn), _ = folds_and_finals(photos, terms, ["graph", "knn"], 2, 0,
                                          engine=LocalEngine(2))
    assert sorted(arrived) == [50, 70]  # kNN's of each community; graph's none
    queries = l2_normalized(photos.features[:12])
    for community, (own_graph, own_knn) in enumerate(zip(graph.inner, knn.inner,
                                                         strict=True)):
        assert own_graph.visual_index is own_knn.index
        own = photo_index(l2_normalized(photos.features[photos.communities == community]))
        np.testing.assert_array_equal(own_graph.visual_index.search(queries, 5)[1],
                                      own.search(queries, 5)[1])
    # a borrower whose fit indexed other photos than the owner's is refused, not served
    from commands.experiments.image2tag import lend_photo_indexes

    graph.inner[0].visual_index = 69  # what its worker sends: the rows it indexed
    with pytest.raises(ValueError, match="graph indexed 69 photos where knn indexed 70"):
        lend_photo_indexes(knn, graph)
