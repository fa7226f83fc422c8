"""A whole `hashrec serve` tree from start to stop, each test its own: a rollout under
load (and a tampered version refused), one Recommend as one trace across the processes,
TLS everywhere, Redis killed and back, a bad start, and SIGTERM draining every child."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from hashrec.v1 import (
    recommender_pb2,
    recommender_pb2_grpc,
)

from shared.grpc_server import CHANNEL_OPTIONS
from tests.processes import (
    SERVICES,
    Load,
    Served,
    sample_photo,
    serving,
)
from tests.servers import certificates, free_ports_in_a_row


def _new_version(source: Path, name: str, tamper: bool = False) -> Path:
    """``source`` copied beside itself as version ``name``: the same weights under a new
    version id, as a retraining writes it; ``tamper``: one array file altered after its
    checksum was written."""
    target = source.parent / name
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))
    if tamper:
        victim = target / next(f for f in manifest["files"] if f.endswith(".npy"))
        victim.write_bytes(victim.read_bytes() + b"\0")
    return target


def _roll_out(folder: Path) -> None:
    subprocess.run([sys.executable, "-m", "commands.cli", "rollout"], check=True, timeout=30,
                   env={**os.environ, "HASHREC_MODELS": str(folder / "models")})


def test_a_rollout_under_load_fails_no_call_and_a_tampered_version_is_refused(
        stack: dict, data_dir: Path, tmp_path: Path) -> None:
    first = stack["trained"].directory
    first = Path(shutil.copytree(first, tmp_path / "versions" / first.name))
    with serving(stack, tmp_path, models=first) as served, \
            Load(f"127.0.0.1:{served.port}", sample_photo(data_dir)) as load:
        load.wait_until_whole(time.monotonic() - 1, 30)
        second = _new_version(first, "29990101-000000-second")
        start = time.monotonic()
        _roll_out(tmp_path)
        served.wait_for(r"recommender: now serving model 29990101-000000-second", 120)
        switched = time.monotonic()
        time.sleep(1.0)
        _new_version(second, "29990101-000001-tampered", tamper=True)
        refusal = time.monotonic()
        _roll_out(tmp_path)
        served.wait_for(r"rollout refused: model 29990101-000001-tampered: .*checksum", 120)
        # A crash after the refusal restarts the service on the version it served, not
        # into the refused one (which would crash-loop on its checksum).
        word = served.kill("word", signal.SIGKILL)
        served.restarted("word", word)
        load.wait_until_whole(time.monotonic(), 60)
        assert not any("checksum does not match" in line and "[word]" in line
                       for line in served.lines)
        time.sleep(1.0)
    during = load.since(start)
    failed = [o for o in during if o.code != "OK"]
    degraded = [o for o in load.since(start) if o.degraded_reasons and o.at < refusal]
    assert during and not failed, {o.code for o in failed}
    # Word and graph kept the old version for the recommender until it switched: no
    # answer lacked their scores (until word was killed on purpose, after the refusal).
    assert not degraded, {r for o in degraded for r in o.degraded_reasons}
    versions = [o.version for o in during]
    assert versions[0] == first.name and versions[-1] == second.name
    assert versions == sorted(versions)  # one switch, never back
    assert {o.version for o in load.since(refusal)} == {second.name}  # the refusal kept it
    print(f"\nfault table: rollout: {len(during)} calls, {len(failed)} failed, "
          f"{len(degraded) / len(during):.1%} degraded, switched {switched - start:.1f} s "
          "after the signal; a tampered version refused by the supervisor, and word killed "
          "after it restarted on the version it served")


def test_one_recommend_is_one_trace_across_the_service_processes(
        stack: dict, data_dir: Path, tmp_path: Path) -> None:
    """HASHREC_TRACING=file: each process writes its spans; the recommender's call to
    vision, word, graph and user continue its trace in their own processes."""
    spans_dir = tmp_path / "spans"
    with serving(stack, tmp_path, HASHREC_TRACING="file",
                 HASHREC_TRACING_FILE=str(spans_dir)) as served, \
            grpc.insecure_channel(f"127.0.0.1:{served.port}", options=CHANNEL_OPTIONS) as channel:
        reply = recommender_pb2_grpc.RecommenderServiceStub(channel).Recommend(
            recommender_pb2.RecommendRequest(image=sample_photo(data_dir) + b"\0trace",
                                             user_id="u00003", k=5), timeout=60)
        assert not reply.degraded, reply.degraded_reasons
        time.sleep(1.0)  # spans are written as they end
    spans = [json.loads(line) for path in spans_dir.glob("*.jsonl")
             for line in path.read_text().splitlines() if line]
    (root,) = [s for s in spans if s["name"] == "/hashrec.v1.RecommenderService/Recommend"
               and s["kind"] == "SpanKind.SERVER"]
    trace_id = root["context"]["trace_id"]
    servers = {s["resource"]["attributes"]["service.name"]: s["name"] for s in spans
               if s["context"]["trace_id"] == trace_id and s["kind"] == "SpanKind.SERVER"}
    assert servers == {"hashrec-recommender": "/hashrec.v1.RecommenderService/Recommend",
                       "hashrec-vision": "/hashrec.v1.VisionService/Embed",
                       "hashrec-word": "/hashrec.v1.WordEmbeddingService/Score",
                       "hashrec-graph": "/hashrec.v1.GraphEmbeddingService/Score",
                       "hashrec-user": "/hashrec.v1.UserProfileService/Score"}
    # every backend span hangs under one of the recommender's client spans
    clients = {s["context"]["span_id"] for s in spans if s["context"]["trace_id"] == trace_id
               and s["kind"] == "SpanKind.CLIENT"
               and s["resource"]["attributes"]["service.name"] == "hashrec-recommender"}
    assert all(s["parent_id"] in clients for s in spans
               if s["context"]["trace_id"] == trace_id and s["kind"] == "SpanKind.SERVER"
               and s is not root)
    print("\ntrace of one Recommend: " + json.dumps(sorted(
        (s["resource"]["attributes"]["service.name"], s["kind"], s["name"],
         round((_ns(s["end_time"]) - _ns(s["start_time"])) / 1e6, 1))
        for s in spans if s["context"]["trace_id"] == trace_id)))


def _ns(timestamp: str) -> float:
    """Nanoseconds since the epoch of an OpenTelemetry JSON timestamp."""
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1e9


def test_with_a_certificate_every_service_speaks_only_tls(stack: dict, data_dir: Path,
                                                         tmp_path: Path) -> None:
    tls = certificates(tmp_path / "tls")
    with serving(stack, tmp_path, **tls) as served:
        target = f"127.0.0.1:{served.port}"
        request = recommender_pb2.RecommendRequest(image=sample_photo(data_dir), user_id="u00003",
                                                   k=5)
        credentials = grpc.ssl_channel_credentials(  # mutual TLS: ours presents the cert
            root_certificates=Path(tls["HASHREC_TLS_CA"]).read_bytes(),
            certificate_chain=Path(tls["HASHREC_TLS_CERT"]).read_bytes(),
            private_key=Path(tls["HASHREC_TLS_KEY"]).read_bytes())
        with grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS) as channel:
            reply = recommender_pb2_grpc.RecommenderServiceStub(channel).Recommend(
                request, timeout=60)
        # the recommender reached vision, word, graph and user over TLS too
        assert reply.hashtags and not reply.degraded, reply.degraded_reasons
        for port in (served.port, served.port + 4):  # the recommender, the user service
            with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, \
                    pytest.raises(grpc.RpcError) as refused:
                recommender_pb2_grpc.RecommenderServiceStub(plain).Recommend(request,
                                                                             timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_redis_killed_and_restarted_under_load_fails_no_call(stack: dict, data_dir: Path,
                                                            tmp_path: Path) -> None:
    import redis as redis_client

    from tests.servers import RedisServer

    redis = RedisServer()
    redis.start()
    try:
        with serving(stack, tmp_path, HASHREC_REDIS_URL=redis.url) as running, \
                Load(f"127.0.0.1:{running.port}", sample_photo(data_dir)) as load:
            load.wait_until_whole(time.monotonic() - 1, 30)
            redis.kill()
            time.sleep(2.0)
            redis.start()  # back, empty
            time.sleep(7.0)  # past each cache's open circuit (5 s: shared/cache.py)
            keys = redis_client.Redis.from_url(redis.url).keys("hashrec:*")
        assert load.outcomes and all(o.code == "OK" and not o.degraded_reasons
                                     for o in load.outcomes)
        # Both vision and the recommender, each in its own process, filled it again.
        assert {key.split(b":")[1] for key in keys} >= {b"features", b"photo_scores"}
    finally:
        redis.kill()


def test_a_bad_start_is_one_clear_line_and_a_nonzero_exit(stack: dict,
                                                          tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "commands.cli", "serve", "--port", "1", "--http-port", "0",
         "--models", str(stack["trained"].directory), "--user-model", str(empty)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "neither a model directory nor a folder" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_sigterm_drains_every_child_and_exits_zero(stack: dict, data_dir: Path,
                                                   tmp_path: Path) -> None:
    port = free_ports_in_a_row(5)
    env = {**os.environ, "HASHREC_MODELS": str(tmp_path),
           "HASHREC_USER_STATE": str(tmp_path / "state"),
           **{f"HASHREC_{name.upper()}_METRICS_PORT": "0" for name in SERVICES}}
    process = subprocess.Popen(  # the user model given as its folder of versions
        [sys.executable, "-m", "commands.cli", "serve", "--port", str(port), "--http-port",
         "0", "--models", str(stack["trained"].directory), "--user-model",
         str(stack["user_dir"].parent)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    served = Served(process, port, tmp_path)
    try:
        served.wait_for(r"^serving hashrec\.v1\.RecommenderService")
        children = list(served.pids.values())
        with Load(f"127.0.0.1:{port}", sample_photo(data_dir)) as load:
            time.sleep(1.0)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        # Every call sent before SIGTERM finished (drained, not cancelled). Later ones were
        # refused: the port closed (UNAVAILABLE), or the call reached the recommender after
        # its shutdown began and gRPC dropped it unanswered (CANCELLED, never a handler's).
        before = [o for o in load.outcomes if o.at < signalled]
        assert before and {o.code for o in before} == {"OK"}
        assert {o.code for o in load.outcomes if o.at >= signalled} <= \
            {"OK", "UNAVAILABLE", "CANCELLED"}
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or \
                "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if process.poll() is None:
            process.kill()
