"""VisionService over a real socket: answers, batching, health, and bad input."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hashrec.v1 import vision_pb2, vision_pb2_grpc
from PIL import Image

from services.vision.model import VisionModel
from services.vision.server import SERVICE_NAME, serve
from shared.grpc_server import CHANNEL_OPTIONS
from tests.servers import LoopThread


class ServerThread(LoopThread):
    """The vision server on its own event loop in a thread."""

    def __init__(self, model: VisionModel) -> None:
        super().__init__()
        self.server = self.call(serve("127.0.0.1", 0, model, max_batch=4, max_delay=0.05,
                                      metrics_port=0))

    def close(self) -> None:
        self.call(self.server.stop())
        super().close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread(VisionModel(device="cpu"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.server.address, options=CHANNEL_OPTIONS) as channel:
        yield channel


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status


def test_a_real_photo_gets_features_and_labels(channel: grpc.Channel, data_dir: Path) -> None:
    stub = vision_pb2_grpc.VisionServiceStub(channel)
    data = (data_dir / "food" / "images" / "0000008.jpg").read_bytes()
    reply = stub.Embed(vision_pb2.EmbedRequest(image=data, top_labels=3), timeout=30)
    assert len(reply.features) == 1280 and len(reply.labels) == 3
    assert reply.labels[0].name == "cheeseburger"
    assert reply.model_version.startswith("efficientnet-lite0-")
    assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_concurrent_requests_share_forward_passes(server: ServerThread, channel: grpc.Channel,
                                                  data_dir: Path) -> None:
    stub = vision_pb2_grpc.VisionServiceStub(channel)
    photos = [p.read_bytes() for p in sorted((data_dir / "food" / "images").glob("*.jpg"))[8:16]]
    before = server.server.batcher.batches
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda d: stub.Embed(vision_pb2.EmbedRequest(image=d),
                                                     timeout=60), photos))
    assert all(len(r.features) == 1280 for r in replies)
    assert server.server.batcher.batches - before < len(photos)  # some were batched


def test_a_photo_seen_before_is_answered_from_the_cache(server: ServerThread,
                                                       channel: grpc.Channel,
                                                       data_dir: Path) -> None:
    stub = vision_pb2_grpc.VisionServiceStub(channel)
    data = (data_dir / "food" / "images" / "0000009.jpg").read_bytes()
    first = stub.Embed(vision_pb2.EmbedRequest(image=data), timeout=30)
    passes = server.server.batcher.batches
    again = stub.Embed(vision_pb2.EmbedRequest(image=data), timeout=30)
    assert server.server.batcher.batches == passes  # no decode, no forward pass
    assert list(again.features) == list(first.features)
    assert [label.name for label in again.labels] == [label.name for label in first.labels]


def test_metrics_count_requests_by_status(server: ServerThread,
                                          channel: grpc.Channel) -> None:
    from urllib.request import urlopen

    with pytest.raises(grpc.RpcError):
        vision_pb2_grpc.VisionServiceStub(channel).Embed(vision_pb2.EmbedRequest(image=b""),
                                                         timeout=10)
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    wanted = 'code="INVALID_ARGUMENT",method="/hashrec.v1.VisionService/Embed"'
    # The server counts a call after its status has gone out: poll briefly.
    for _ in range(50):
        with urlopen(url, timeout=10) as response:
            text = response.read().decode()
        if wanted in text:
            break
        time.sleep(0.1)
    assert wanted in text
    assert "hashrec_grpc_seconds_bucket" in text


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("request_", "message"), [
    (vision_pb2.EmbedRequest(image=b""), "image is empty"),
    (vision_pb2.EmbedRequest(image=bytes(range(256)) * 64), "not a decodable image"),
    (vision_pb2.EmbedRequest(image=_png(10_000, 5_000)), "50,000,000 pixels"),
    (vision_pb2.EmbedRequest(image=_png(20, 20), top_labels=5000), "top_labels must be"),
])
def test_bad_input_is_invalid_argument_and_the_service_stays_up(
        channel: grpc.Channel, data_dir: Path, request_: vision_pb2.EmbedRequest,
        message: str) -> None:
    stub = vision_pb2_grpc.VisionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.Embed(request_, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    good = (data_dir / "food" / "images" / "0000008.jpg").read_bytes()
    assert len(stub.Embed(vision_pb2.EmbedRequest(image=good), timeout=30).features) == 1280


def test_truncated_jpeg_is_invalid_argument(channel: grpc.Channel, data_dir: Path) -> None:
    data = (data_dir / "food" / "images" / "0000008.jpg").read_bytes()
    with pytest.raises(grpc.RpcError) as error:
        vision_pb2_grpc.VisionServiceStub(channel).Embed(
            vision_pb2.EmbedRequest(image=data[: len(data) // 2]), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncated or corrupt" in error.value.details()


def test_a_message_over_the_size_limit_is_refused(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as error:
        vision_pb2_grpc.VisionServiceStub(channel).Embed(
            vision_pb2.EmbedRequest(image=b"\0" * (25 * 1024 * 1024)), timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_a_one_pixel_wide_photo_is_answered_and_the_service_stays_up(
        channel: grpc.Channel) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 8000), (30, 120, 200)).save(buffer, "PNG")  # ~110 bytes
    stub = vision_pb2_grpc.VisionServiceStub(channel)
    for _ in range(3):
        reply = stub.Embed(vision_pb2.EmbedRequest(image=buffer.getvalue()), timeout=30)
        assert len(reply.features) == 1280
    assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_health_turns_not_serving_on_shutdown(data_dir: Path) -> None:
    """A watcher of the health stream (a load balancer) hears NOT_SERVING from stop()
    itself, before the server drains and closes."""
    import asyncio

    running = ServerThread(VisionModel(device="cpu"))
    with grpc.insecure_channel(running.server.address) as channel:
        updates = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=60)
        assert next(updates).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.run_coroutine_threadsafe(running.server.stop(), running.loop)
        assert next(updates).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopping.result(timeout=60)
    super(ServerThread, running).close()
