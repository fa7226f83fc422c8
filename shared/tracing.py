"""OpenTelemetry tracing across the services, off unless configured.

    HASHREC_TRACING        off (default) | console | file | otlp
    HASHREC_TRACING_FILE   with ``file``: a folder; each process appends its spans, one JSON
                           object a line, to <folder>/<service name>.jsonl
    HASHREC_TRACING_SAMPLE the share of new traces kept (default 1.0); a call that arrives
                           inside a trace follows its caller's decision
    OTEL_SERVICE_NAME      the service's name in its spans (`hashrec serve` sets one per
                           child: hashrec-vision, …); default "hashrec"
    (otlp: the exporter's own OTEL_EXPORTER_OTLP_* variables, and the package
    opentelemetry-exporter-otlp-proto-grpc installed)

The gRPC instrumentation of opentelemetry-python-contrib does the work: a server
interceptor opens a span for every call and continues the caller's trace from the
metadata; the client interceptors put the current trace into every outgoing call. One
Recommend is then one trace: the recommender's span with vision, word, graph and user
under it. Log records carry the trace id (``trace_id``, in JSON logs a field).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from shared.config import env_number

TRACING_ENV = "HASHREC_TRACING"
_state: dict[str, bool] = {}


def mode() -> str:
    return os.environ.get(TRACING_ENV, "off").strip().lower() or "off"


def enabled() -> bool:
    """Whether this process traces (and ``setup_tracing`` has run)."""
    return setup_tracing()


def setup_tracing() -> bool:
    """Installs the tracer provider once per process, as the environment says; whether
    tracing is on. An unknown mode is an error naming the choices."""
    if "on" in _state:
        return _state["on"]
    chosen = mode()
    if chosen == "off":
        _state["on"] = False
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    name = os.environ.get("OTEL_SERVICE_NAME", "hashrec")
    ratio = env_number("HASHREC_TRACING_SAMPLE", 1.0)
    provider = TracerProvider(resource=Resource.create({"service.name": name}),
                              sampler=ParentBased(TraceIdRatioBased(ratio)))
    if chosen == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif chosen == "file":
        folder = Path(os.environ["HASHREC_TRACING_FILE"])
        folder.mkdir(parents=True, exist_ok=True)
        stream = (folder / f"{name}.jsonl").open("a", encoding="utf-8")
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=stream, formatter=lambda span: json.dumps(json.loads(span.to_json())) + "\n")))
    elif chosen == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"{TRACING_ENV}={chosen!r}: choose off, console, file or otlp")
    trace.set_tracer_provider(provider)
    _add_trace_ids_to_logs()
    _state["on"] = True
    return True


def server_interceptors() -> list:
    """What a grpc.aio server adds to trace its calls (none when tracing is off)."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list | None:
    """What a grpc.aio channel adds to carry the trace into its calls (None when off)."""
    if not enabled():
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return aio_client_interceptors()


def _add_trace_ids_to_logs() -> None:
    from opentelemetry import trace

    factory = logging.getLogRecordFactory()

    def with_trace_id(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        context = trace.get_current_span().get_span_context()
        record.trace_id = f"{context.trace_id:032x}" if context.is_valid else ""
        return record

    logging.setLogRecordFactory(with_trace_id)
