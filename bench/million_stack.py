"""Recommend through the whole stack on a model of a million photos (#29 item 5). Part of
bench/million.py; alone:

    python bench/million_stack.py [--photos 1000000] [--calls 200] [--models DIR]
        [--user-model DIR]

The reference is the newest trained default model under $HASHREC_MODELS (trained first
when there is none, with its user model). Beside it the same model grown to --photos
photos: each community's photos resampled with noise from its own (as
bench/million_photos.py does), in proportion to its size, one photo index built per
community as training builds it (IVF above 50,000 photos, tuned to recall@10 ≥ 0.95) and
shared by its kNN, graph and semantic methods, each photo keeping its source photo's
hashtags and DeepWalk vector; the rest (vocabulary, gate, MLP, InstaHash, AutoRec, the
fusions) as trained. It is written as a model is written, then each model is served by
`hashrec serve` (one process per service; the reference before and after the grown
model) and called one Recommend at a time: photos no cache has seen (each a shipped photo
made new by a JPEG comment, every other call from a known user), then the same photos
again (answers cached). For each model: seconds from start to serving, each service's
memory after the calls (RSS; PSS, where the pages of a model file that several services
map are divided among them; its own; the photo indexes' maps: size and resident), p50 /
p99 of each kind of call; then the grown model's figures over the reference's (the mean
of its two runs), and the growing's own peak (a process of its own). Writes
out/million_stack.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the stack helpers
from million_photos import noisy_copies
from serving import new_photo
from stack import memory_kib, serve_processes, served_models, service_pids
from train import own_peak_rss_kib

from services.image_models import KIND, OUT_OF_FOLD_PHOTOS, OUT_OF_FOLD_SCORES, load_image_models
from shared.artifacts import ArtifactReader, ArtifactWriter, resolve_artifact
from shared.config import data_root
from shared.grpc_server import CHANNEL_OPTIONS
from shared.index import photo_index

REPO = Path(__file__).resolve().parent.parent
PHOTO_METHODS = ("knn", "graph", "semantic")


def parts(method: object) -> list:
    """A gated method's community methods, or the method of a one-community model."""
    return list(getattr(method, "inner", [method]))


def grow(reference: Path, n: int, out: Path, seed: int) -> dict:
    """``reference`` grown to ``n`` photos (module docstring), written to ``out``."""
    started = time.perf_counter()
    models = load_image_models(reference)
    knn, graph, semantic = (parts(models.methods[m]) for m in PHOTO_METHODS)
    sizes = [part.index.size for part in knn]
    rng = np.random.default_rng(seed)
    built = []
    for community, size in enumerate(sizes):
        own_knn, own_graph, own_semantic = knn[community], graph[community], semantic[community]
        if not own_graph.visual_index is own_knn.index is own_semantic.visual_index:
            raise ValueError(f"{reference}: community {community}'s kNN, graph and semantic "
                             "methods do not index the same photos")
        count = max(1, round(n * size / sum(sizes)))
        picks = rng.integers(size, size=count)
        features = noisy_copies(own_knn.index.vectors, picks, rng)
        index = photo_index(features)  # as KnnMethod.fit builds it
        if index.kind != "flat":
            index._chunks = []  # FAISS's index holds the rows; the array goes
        del features
        own_knn.index = own_graph.visual_index = own_semantic.visual_index = index
        own_knn.train_tags = own_knn.train_tags[picks]
        own_semantic.train_tags = own_semantic.train_tags[picks]
        if own_semantic.neighbour_text is not None:  # a model written before its tags
            own_semantic.neighbour_text = own_semantic.neighbour_text[picks]
        own_graph.image_vectors = np.ascontiguousarray(own_graph.image_vectors[picks])
        built.append({"photos": count, "index": index.kind, "setting": index.setting,
                      "recall_at_10": round(index.recall, 3)})
        print(f"  community {community}: {count:,} photos, {index.kind} index "
              f"(setting {index.setting}, recall@10 {index.recall:.3f})", flush=True)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    reader = ArtifactReader(reference)
    writer = ArtifactWriter(out)
    for method in models.methods.values():
        method.save(writer)
    models.fusion.save(writer)
    if models.ranker is not None:
        models.ranker.save(writer)
    for name, own in models.community_rankers.items():
        own.save(writer.scoped(f"community/{name}"))
    writer.array(OUT_OF_FOLD_SCORES, reader.array(OUT_OF_FOLD_SCORES))
    writer.json(OUT_OF_FOLD_PHOTOS, reader.json(OUT_OF_FOLD_PHOTOS))
    writer.json("vocabulary", reader.json("vocabulary"))
    manifest = {key: value for key, value in reader.manifest.items()
                if key not in ("files", "aliases")}
    communities = [{**about, "photos": part["photos"]}
                   for about, part in zip(manifest.get("communities", [{}]), built,
                                          strict=True)]
    writer.close({**manifest, "version": f"{manifest['version']}-grown-{n}",
                  "n_train": sum(part["photos"] for part in built),
                  "communities": communities, "grown_from": reference.name},
                 durable=True)
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"photos": sum(part["photos"] for part in built), "communities": built,
            "build_s": round(build_s, 1), "write_s": round(time.perf_counter() - started, 1),
            "disk_gb": round(disk / 1e9, 2)}


async def served(model_dir: Path, user_dir: Path, photos: list[bytes], users: list[str],
                 calls: int) -> dict:
    """``model_dir`` served by `hashrec serve`: start seconds, memory, Recommend p50 /
    p99 one call at a time, new photos then the same again."""
    import grpc
    from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

    first_number = secrets.randbits(40) * 10**7  # photos no run before has sent
    started = time.perf_counter()
    async with serve_processes(model_dir, user_dir, batch=8, report_pid=True) as (
            address, supervisor):
        start_s = time.perf_counter() - started
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)

            async def recommend(image: bytes, i: int) -> float:
                began = time.perf_counter()
                reply = await stub.Recommend(recommender_pb2.RecommendRequest(
                    image=image, user_id=users[i % len(users)] if i % 2 else "", k=10),
                    timeout=30)
                if reply.degraded:
                    raise RuntimeError(f"a degraded answer: {list(reply.degraded_reasons)}")
                return 1000 * (time.perf_counter() - began)

            for i in range(4):  # each service's first call (lazy set-up) is not measured
                await recommend(new_photo(photos[i], first_number + 10**6 + i), i)
            sent = [new_photo(photos[i % len(photos)], first_number + i) for i in range(calls)]
            new = [await recommend(image, i) for i, image in enumerate(sent)]
            again = [await recommend(image, i) for i, image in enumerate(sent)]
        memory = {name: memory_kib(pid) for name, pid in service_pids(supervisor).items()}
    total = {key: sum(m[key] for m in memory.values()) for key in memory["recommender"]}
    return {"start_s": round(start_s, 1),
            "new_photo_p50_ms": round(float(np.percentile(new, 50)), 2),
            "new_photo_p99_ms": round(float(np.percentile(new, 99)), 2),
            "cached_p50_ms": round(float(np.percentile(again, 50)), 2),
            "cached_p99_ms": round(float(np.percentile(again, 99)), 2),
            "calls": calls,
            # after the calls: a mapped index's pages count where the searches touched
            # them (index_map_rss), the whole map apart (index_map_size)
            "services_mib_after_calls": {name: {k: v // 1024 for k, v in m.items()}
                                         for name, m in memory.items()},
            "services_total_mib_after_calls": {k: v // 1024 for k, v in total.items()}}


def recommend_at(n: int, calls: int, models: Path | None, user_model: Path | None,
                 seed: int = 0) -> dict:
    """The whole measurement (module docstring); ``models`` and ``user_model``: a version
    or a folder of versions."""
    from services.user.lookup import KIND as USER_KIND

    reference, user_dir = served_models(argparse.Namespace(
        models=models and resolve_artifact(models, KIND),
        user_model=user_model and resolve_artifact(user_model, USER_KIND)))
    users = json.loads((user_dir / "manifest.json").read_text())["users"][:50]
    root = data_root()
    photos = [p.read_bytes() for p in sorted((root / "instagram" / "images").rglob("*.jpg"))
              + sorted((root / "food" / "images").glob("*.jpg"))]
    photos = [photos[i] for i in np.random.default_rng(seed).permutation(len(photos))]
    report = {"reference": {"model": reference.name, "photos": json.loads(
        (reference / "manifest.json").read_text())["n_train"]}}
    print(f"the reference, {reference.name}: {calls} Recommend calls, one at a time ...",
          flush=True)
    report["reference"].update(asyncio.run(served(reference, user_dir, photos, users,
                                                  calls)))
    (REPO / "out").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "out") as temporary:
        grown = Path(temporary) / KIND / "grown"
        print(f"the model grown to {n:,} photos ...", flush=True)
        made = subprocess.run([sys.executable, __file__, "--grow", str(reference), "--into",
                               str(grown), "--photos", str(n), "--seed", str(seed)],
                              capture_output=True, text=True)
        if made.returncode:
            raise RuntimeError(f"growing the model failed:\n{made.stderr[-3000:]}")
        *progress, last = made.stdout.rstrip().splitlines()
        print("\n".join(progress), flush=True)  # each community's index
        report["grown"] = json.loads(last)
        print(f"  written: {json.dumps(report['grown'])}", flush=True)
        report["grown"].update(asyncio.run(served(grown, user_dir, photos, users, calls)))
    # and the reference again, after: neither is always the first to start cold
    print("the reference again ...", flush=True)
    report["reference_again"] = asyncio.run(served(reference, user_dir, photos, users, calls))
    report["grown_over_reference"] = {  # over the mean of the two reference runs
        key: round(2 * report["grown"][key]
                   / (report["reference"][key] + report["reference_again"][key]), 2)
        for key in ("start_s", "new_photo_p50_ms", "new_photo_p99_ms", "cached_p50_ms",
                    "cached_p99_ms")}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=200,
                        help="Recommend calls of each kind a model")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--user-model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "million_stack.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grow", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--into", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grow is not None:  # the growing alone, in a process of its own
        made = grow(args.grow, args.photos, args.into, args.seed)
        print(json.dumps({**made, "grow_peak_rss_gib": round(own_peak_rss_kib() / 2**20, 2)}))
        return
    report = recommend_at(args.photos, args.calls, args.models, args.user_model, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
