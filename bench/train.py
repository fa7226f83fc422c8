"""The default training at three sizes, in one run: what it costs and how that grows.

    python bench/train.py [--photos 500,1000,0] [--workers N] [--json F] [--plot F]
    python bench/train.py --photos 100000 --json out/train-100k.json --plot docs/train-100k.png

Each size is `hashrec train`'s default recipe (every shipped photo set as a community, the
tag-only corpora as hashtag knowledge, the seven default methods, three folds) on the first
N photos (0: all), each photo set contributing its share. Each runs in a fresh process,
as `hashrec train` would, with the usual feature store: features already computed are read
from it (embedding a photo is the vision bench's figure, bench/vision.py), so what is
measured is the training itself. For each size it prints and writes:

- wall seconds, CPU seconds (the process and its pool of workers) and CPU utilisation, for
  the whole run and for the fits alone (the part a pool spreads over the cores);
- seconds per stage: reading the data and the text resources, the photos' features, the
  fits, the rest (writing, start-up), and the fusions' fit, which runs beside the final
  fits (within "fits");
- each method's CPU seconds, all its fits together;
- the peak resident memory of the process tree (every process's RSS summed, sampled);
- the training driver's own peak resident memory (the process that runs
  ``train_communities``, its VmHWM: what holds every photo, the out-of-fold scores and
  the fitted methods), apart from its pool of workers;
- seconds per 1,000 photos, and the exponent of the growth from the size before
  (1: linear; below 1: fixed costs still dominate).

A size beyond the shipped photos (2,794) is made of them resampled: each new photo a
shipped photo's features plus noise (0.3 of each feature's spread, as bench/index.py makes
its vectors), its class probabilities and hashtags, in its source's community, written to a
scratch feature store under a file of its own (a few bytes, never decoded: its sha256 names
its store entry), before the timed process starts.

It writes `out/train.json` and a plot (`docs/train.png`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_SIZES = "500,1000,0"
#: photos with an image in the default recipe's photo sets; larger sizes are resampled
SHIPPED_PHOTOS = 2_794


def child(photos: int, out: Path, workers: int | None,
          resampled: Path | None = None, methods: tuple[str, ...] | None = None) -> None:
    """One training, in this process: the default recipe on ``photos`` photos (the
    ``resampled`` ones when given: ``resample``'s folder), with ``methods`` in place of the
    default seven when given."""
    from commands.engine import LocalEngine
    from commands.experiments.image2tag import Community
    from commands.train import (
        DEFAULT_COMMUNITIES,
        DEFAULT_CORPORA,
        DEFAULT_METHODS,
        hashtag_knowledge,
        train_communities,
    )
    from services.vision.store import FeatureStore
    from shared.batching import usable_cores
    from shared.config import models_dir, setup_logging
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    setup_logging()
    started = time.perf_counter()
    read = {spec: normalize_post_hashtags(read_posts(spec))
            for _, spec, _ in DEFAULT_COMMUNITIES}
    with_photos = {spec: [p for p in posts if p.image is not None]
                   for spec, posts in read.items()}
    total = sum(len(posts) for posts in with_photos.values())
    share = photos / total if photos else 1.0
    members = [Community(name, with_photos[spec][:max(1, round(share * len(
        with_photos[spec])))], ignore) for name, spec, ignore in DEFAULT_COMMUNITIES]
    store = FeatureStore(models_dir() / "features")
    if resampled is not None:
        members = resampled_communities(resampled)
        store = FeatureStore(resampled / "features", backbone=store.backbone)
    text = hashtag_knowledge(DEFAULT_CORPORA, None, read)  # every post's hashtags, as served
    read_s = time.perf_counter() - started
    engine = LocalEngine(workers or usable_cores())
    models = train_communities(members, store, out, methods or DEFAULT_METHODS, folds=3,
                               progress=False, text=text, engine=engine)
    peak_kib = own_peak_rss_kib()
    (out / "read.json").write_text(json.dumps({"read_s": read_s,
                                               "directory": str(models.directory),
                                               "driver_peak_rss_mib": round(peak_kib / 1024)}))


def own_peak_rss_kib() -> int:
    """This process's peak resident KiB since it started: VmHWM, its own address space's.
    Not ru_maxrss, which Linux carries over an exec from the process forked to run it: a
    child of this bench reported the bench's RSS at the fork when it stayed below it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def resample(photos: int, folder: Path, seed: int = 0) -> None:
    """``photos`` photos resampled from the shipped ones (each community keeping its
    share), written to ``folder``: a scratch feature store, a file a photo, and
    ``posts.jsonl`` (community, photo file, hashtags)."""
    import hashlib

    import numpy as np

    from commands.train import DEFAULT_COMMUNITIES
    from services.vision.store import FeatureStore
    from shared.config import models_dir
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    shipped = FeatureStore(models_dir() / "features")
    store = FeatureStore(folder / "features", backbone=shipped.backbone)
    sources = {name: [p for p in normalize_post_hashtags(read_posts(spec))
                      if p.image is not None] for name, spec, _ in DEFAULT_COMMUNITIES}
    total = sum(len(posts) for posts in sources.values())
    rng = np.random.default_rng(seed)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    written = 0
    with (folder / "posts.jsonl").open("w") as out:
        for name, posts in sources.items():
            embedding, ok = shipped.embed_paths([p.image for p in posts], progress=False)
            readable = np.flatnonzero(ok)
            spread = 0.3 * embedding.features[readable].std(axis=0)
            for source in rng.choice(readable, size=round(photos * len(posts) / total)):
                path = folder / "photos" / f"{written}.bin"
                data = f"resampled photo {written} of {posts[source].id}".encode()
                path.write_bytes(data)
                noise = rng.normal(size=spread.shape).astype(np.float32) * spread
                store.save(hashlib.sha256(data).hexdigest(),  # as embed_paths would
                            embedding.features[source] + noise,
                            embedding.probabilities[source])
                out.write(json.dumps({"community": name, "image": str(path),
                                      "hashtags": posts[source].hashtags}) + "\n")
                written += 1
                if written % 10_000 == 0:
                    print(f"  resampled {written:,} of {photos:,} photos", flush=True)


def resampled_communities(folder: Path) -> list:
    """``resample``'s posts as the default recipe's communities."""
    from commands.experiments.image2tag import Community
    from commands.train import DEFAULT_COMMUNITIES
    from shared.data.readers import Post

    posts: dict[str, list[Post]] = {name: [] for name, _, _ in DEFAULT_COMMUNITIES}
    with (folder / "posts.jsonl").open() as lines:
        for number, line in enumerate(lines):
            row = json.loads(line)
            posts[row["community"]].append(Post(f"resampled-{number}", Path(row["image"]),
                                                tuple(row["hashtags"])))
    return [Community(name, posts[name], ignore) for name, _, ignore in DEFAULT_COMMUNITIES]


def warm_feature_store() -> None:
    """Embeds the shipped photos the feature store lacks (a fresh clone's first training
    would), before anything is timed."""
    from commands.train import DEFAULT_COMMUNITIES
    from services.vision.store import FeatureStore
    from shared.config import models_dir
    from shared.data.readers import read_posts

    store = FeatureStore(models_dir() / "features")
    paths = [p.image for _, spec, _ in DEFAULT_COMMUNITIES for p in read_posts(spec)
             if p.image is not None]
    missing = store.missing(paths)
    if missing:
        started = time.perf_counter()
        store.embed_paths(missing, progress=True)
        print(f"embedded {len(missing)} photos the feature store lacked in "
              f"{time.perf_counter() - started:.0f} s (not part of the figures)", flush=True)


def _tree(root: int) -> list[int]:
    """``root`` and every process below it, from /proc."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        with contextlib.suppress(OSError):  # it ended meanwhile
            queue += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text()
                      .split()]
    return found


def _cpu_and_rss(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds used so far, resident MiB), summed over ``pids``."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    cpu = rss = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / tick
        rss += int(fields[21]) * page / 2**20
    return cpu, rss


def measure(photos: int, workers: int | None, scratch: Path,
            methods: tuple[str, ...] | None = None) -> dict:
    """Runs ``child`` in a fresh process and reads it from outside: a sample of the tree's
    CPU and memory every half second; the totals from wait4 when it ends. Beyond the
    shipped photos, on resampled ones (``resample``, before the clock starts)."""
    out = scratch / f"n{photos}"
    command = [sys.executable, __file__, "--child", str(photos), "--out", str(out)]
    if workers:
        command += ["--workers", str(workers)]
    if methods:
        command += ["--methods", ",".join(methods)]
    if photos > SHIPPED_PHOTOS:
        print(f"  resampling {photos:,} photos from the shipped ones (not timed)", flush=True)
        resample(photos, scratch / f"resampled-{photos}")
        command += ["--resampled", str(scratch / f"resampled-{photos}")]
    started_at, started = time.time(), time.perf_counter()
    with (scratch / f"n{photos}.log").open("w") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    samples: list[tuple[float, float, float, float]] = []  # (epoch, CPU s, RSS MiB, driver's)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            cpu, rss = _cpu_and_rss(_tree(process.pid))
            samples.append((time.time(), cpu, rss, _cpu_and_rss([process.pid])[1]))
            if len(samples) % 60 == 0:  # the training can run for hours: a line a 30 s
                print(f"  {samples[-1][0] - started_at:,.0f} s: {cpu:,.0f} CPU s, driver "
                      f"{samples[-1][3]:,.0f} MiB, all processes {rss:,.0f} MiB",
                      flush=True)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:  # the scratch folder goes with the run: its log's end, here
        tail = (scratch / f"n{photos}.log").read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(f"training on {photos} photos failed; the end of its log:\n"
                         + "\n".join(tail))
    read = json.loads((out / "read.json").read_text())
    manifest = json.loads((Path(read["directory"]) / "manifest.json").read_text())
    training = manifest["training"]
    # the fusions are fit during the final fits: "fusion" lies within "fits"
    stages = {"read": read["read_s"], **training["stage_seconds"]}
    stages["other"] = max(0.0, wall - stages["read"] - stages["photos"] - stages["fits"])
    # the fits' window, placed on the samples by the manifest's start time
    fits_from = training["started_at"] + training["stage_seconds"]["photos"]
    fits_to = fits_from + training["stage_seconds"]["fits"]
    inside = [s for s in samples if fits_from <= s[0] <= fits_to]
    fits_util = (100 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
                 if len(inside) > 2 else None)
    cpu = usage.ru_utime + usage.ru_stime
    return {"photos": manifest["n_train"], "requested": photos, "methods": manifest["methods"],
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "cpu_util_pct": round(100 * cpu / wall),
            "fits_cpu_util_pct": None if fits_util is None else round(fits_util),
            "stage_s": {k: round(v, 1) for k, v in stages.items()},
            "fit_cpu_s": training["fit_cpu_seconds"], "workers": training["workers"],
            "fit_passes": manifest.get("fit_passes"),  # as the model says it was trained
            "peak_rss_mib": round(max((s[2] for s in samples), default=0.0)),
            "driver_peak_rss_mib": read["driver_peak_rss_mib"],
            "s_per_1000_photos": round(1000 * wall / manifest["n_train"], 1),
            "started_at": started_at,
            # the driver's resident MiB over the run, with when each stage ended (seconds)
            "driver_rss_mib": [(round(s[0] - started_at, 1), round(s[3])) for s in samples],
            "stage_ends_s": _stage_ends(training, started_at, read["read_s"])}


def _stage_ends(training: dict, started_at: float, read_s: float) -> dict[str, float]:
    """Seconds from the run's start to the end of reading, the photos and the fits."""
    photos_end = training["started_at"] - started_at + training["stage_seconds"]["photos"]
    return {"read": round(read_s, 1), "photos": round(photos_end, 1),
            "fits": round(photos_end + training["stage_seconds"]["fits"], 1)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (stages_axis, methods_axis, memory_axis) = plt.subplots(1, 3, figsize=(15, 3.8))
    labels = [f"{r['photos']:,} photos" for r in rows]
    bottom = [0.0] * len(rows)
    for stage, colour in zip(("read", "photos", "fits", "other"),
                             ("#bbb", "#9cf", "#2a5", "#777"), strict=True):
        values = [r["stage_s"][stage] for r in rows]
        stages_axis.bar(labels, values, bottom=bottom, label=stage, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for x, row in enumerate(rows):
        stages_axis.annotate(f"{row['wall_s']:.0f} s, {row['cpu_util_pct']} % CPU",
                             (x, row["wall_s"]), ha="center", va="bottom", fontsize=8)
    stages_axis.set_ylim(0, 1.15 * max(r["wall_s"] for r in rows))
    stages_axis.set_title("wall seconds by stage")
    stages_axis.legend(fontsize=8, loc="upper left")
    methods = list(rows[-1]["fit_cpu_s"])
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        methods_axis.bar([m + i * width for m in range(len(methods))],
                         [row["fit_cpu_s"][name] for name in methods], width,
                         label=labels[i])
    methods_axis.set_xticks([m + width * (len(rows) - 1) / 2 for m in range(len(methods))],
                            methods, rotation=30, fontsize=8)
    methods_axis.set_title("CPU seconds of each method's fits")
    methods_axis.legend(fontsize=8)
    for label, row in zip(labels, rows, strict=True):
        seconds, mib = zip(*row["driver_rss_mib"], strict=True) if row["driver_rss_mib"] \
            else ((), ())
        (line,) = memory_axis.plot(seconds, mib, label=label, linewidth=1)
        for stage, end in row["stage_ends_s"].items():
            memory_axis.axvline(end, color=line.get_color(), linestyle=":", linewidth=0.8)
            memory_axis.annotate(stage, (end, 0), fontsize=6, rotation=90, va="bottom")
    memory_axis.set_xlabel("seconds (dotted: end of each stage)")
    memory_axis.set_title("the driver's resident MiB")
    memory_axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=DEFAULT_SIZES,
                        help="photo counts to train on, comma-separated (0: every photo)")
    parser.add_argument("--workers", type=int, default=None,
                        help="the pool's processes (default: the usable cores)")
    parser.add_argument("--methods", default=None,
                        help="methods to train, comma-separated (default: the default "
                             "recipe's seven); e.g. the driver's memory without the costly fits")
    parser.add_argument("--json", type=Path, default=Path("out/train.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/train.png"))
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--resampled", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = tuple(args.methods.split(",")) if args.methods else None
    if args.child is not None:
        child(args.child, args.out, args.workers, args.resampled, methods)
        return

    sizes = [int(n) for n in args.photos.split(",")]
    warm_feature_store()
    print(f"the default training{' with ' + ','.join(methods) if methods else ''} on "
          f"{', '.join(str(n or 'all') for n in sizes)} photos, "
          f"one fresh process each, {os.cpu_count()} CPUs here", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hashrec-bench-train-") as scratch:
        for photos in sizes:
            rows.append(measure(photos, args.workers, Path(scratch), methods))
            print(f"  {rows[-1]['photos']} photos: {rows[-1]['wall_s']} s", flush=True)
    for before, row in itertools.pairwise(rows):
        row["growth_exponent"] = round(math.log(row["wall_s"] / before["wall_s"])
                                       / math.log(row["photos"] / before["photos"]), 2)
    stages = list(rows[0]["stage_s"])
    print(f"\n{'photos':>6} {'wall s':>7} {'CPU s':>7} {'CPU %':>6} {'fits %':>7} "
          + "".join(f"{s + ' s':>9}" for s in stages)
          + f" {'peak MiB':>9} {'driver':>7} {'s/1000':>7} {'growth':>7}")
    for row in rows:
        print(f"{row['photos']:>6} {row['wall_s']:>7.1f} {row['cpu_s']:>7.1f} "
              f"{row['cpu_util_pct']:>6} {row['fits_cpu_util_pct'] or '-':>7} "
              + "".join(f"{row['stage_s'][s]:>9.1f}" for s in stages)
              + f" {row['peak_rss_mib']:>9} {row['driver_peak_rss_mib']:>7} "
              f"{row['s_per_1000_photos']:>7.1f} "
              f"{row.get('growth_exponent', '-'):>7}")
    methods = list(rows[-1]["fit_cpu_s"])
    print(f"\nCPU seconds of each method's fits (3 folds + the final fit)\n{'photos':>6} "
          + "".join(f"{m[:14]:>15}" for m in methods))
    for row in rows:
        print(f"{row['photos']:>6} " + "".join(f"{row['fit_cpu_s'][m]:>15.1f}"
                                               for m in methods))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    plot(rows, args.plot)
    print(f"written {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
