"""The local engine: a pool of processes trains the serial engine's bytes, whatever the
caller's threads, and its workers end with their driver (Ray: tests/test_engine_ray.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from commands.engine import LocalEngine, make_engine
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from tests.training import manifest, trained_slice


@pytest.fixture(scope="module")
def both_trained(tmp_path_factory: pytest.TempPathFactory, food_posts):
    """The same slice trained in this process and on a pool of two processes
    (tests/test_engine_ray.py: on Ray)."""
    return {key: trained_slice(food_posts, tmp_path_factory.mktemp(key), engine)
            for key, engine in (("local", LocalEngine()), ("pool", LocalEngine(workers=2)))}


def test_a_pool_of_processes_writes_the_serial_engines_artifact_byte_for_byte(both_trained):
    (serial, _), (pool, _) = both_trained["local"], both_trained["pool"]
    assert manifest(pool)["files"] == manifest(serial)["files"]
    assert pool.version.rsplit("-", 1)[1] == serial.version.rsplit("-", 1)[1]


def test_a_fit_gives_the_same_bits_whatever_the_callers_thread_count(
        data_dir: Path, feature_store, food_posts, tmp_path: Path):
    # Large enough that torch and the BLAS split their sums over threads (two communities
    # of 300 photos: the gate's logistic regression, an MLP each): what a Ray task (one
    # CPU) and the local engine (every core) would otherwise fit differently.
    import torch
    from threadpoolctl import threadpool_limits

    from commands.experiments.image2tag import Community, community_photos, fitted_methods
    from commands.train import INSTAGRAM_SEARCH_TAGS
    from shared.artifacts import ArtifactWriter

    instagram = normalize_post_hashtags(read_posts(f"instagram:{data_dir / 'instagram'}"))
    photos, terms, _ = community_photos(
        [Community("food", food_posts[:300], frozenset({"food"})),
         Community("instagram", instagram[:300], INSTAGRAM_SEARCH_TAGS)],
        feature_store, 2, 1000, progress=False)
    manifests = []
    threads = torch.get_num_threads()
    for count in (2, 1):
        torch.set_num_threads(count)
        try:
            with threadpool_limits(limits=count):
                (method,) = fitted_methods(photos, terms, ["mlp"], seed=0)
        finally:
            torch.set_num_threads(threads)
        writer = ArtifactWriter(tmp_path / str(count))
        method.save(writer)
        writer.close({"kind": "test"})
        manifests.append(json.loads((tmp_path / str(count) / "manifest.json").read_text()))
    assert any("gate_weight" in name for name in manifests[0]["files"])
    assert manifests[0]["files"] == manifests[1]["files"]


def test_an_unknown_engine_or_a_stray_address_is_refused():
    with pytest.raises(SystemExit, match="unknown engine 'spark'"):
        make_engine("spark")
    with pytest.raises(SystemExit, match="--address goes with --engine ray"):
        make_engine("local", address="ray://head:10001")
    with pytest.raises(SystemExit, match="--workers must be at least 1"):
        LocalEngine(workers=0)


def test_a_killed_driver_takes_its_pool_of_workers_with_it(tmp_path: Path) -> None:
    """SIGKILL to the process that runs the pool (a training's driver): its workers end
    too, not fit on and then idle with their memory."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    script = f"""
import os, time
from pathlib import Path
from commands.engine import LocalEngine

def busy(item):
    Path({str(tmp_path)!r}, f"worker-{{os.getpid()}}").touch()
    time.sleep(120)

list(LocalEngine(2).map(busy, [0, 1]))
"""
    driver = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("worker-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
        assert len(workers) == 2, "the pool's two workers never started their tasks"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
                 and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
        assert not alive, f"workers {alive} outlived their driver"
    finally:
        driver.kill()
        for pid in [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_pools_idle_workers_leave_ctrl_c_to_their_driver() -> None:
    """Ctrl-C reaches the whole process group; a pool's worker ignores it (the driver
    answers in one line, and its workers end with it) where an idle one printed loky's
    45-line KeyboardInterrupt traceback and died."""
    import os
    import signal
    import time

    engine = LocalEngine(2)
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:  # a slow start runs none
        workers |= set(engine.map(lambda _: (time.sleep(0.2), os.getpid())[1], range(4)))
    assert os.getpid() not in workers and len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    time.sleep(1.0)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    assert set(alive) == workers, f"{workers - set(alive)} died of the SIGINT"
    assert set(engine.map(lambda _: os.getpid(), range(6))) <= workers  # still serving
