"""One logging set-up for every command and service: plain text, or JSON for collectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LOG_ONE_LINE = """
import logging
from shared.config import setup_logging
setup_logging()
logging.getLogger("services.word").warning("refused model %s", "v2 (ünïcode)")
"""


def _log(**env: str) -> str:
    run = subprocess.run([sys.executable, "-c", LOG_ONE_LINE], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parents[1],
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    return run.stderr.strip()


def test_json_logs_are_one_object_a_line_with_time_level_logger_and_message() -> None:
    line = _log(HASHREC_LOG_FORMAT="json")
    record = json.loads(line)
    assert record["level"] == "WARNING" and record["logger"] == "services.word"
    assert record["message"] == "refused model v2 (ünïcode)" and record["time"]


def test_plain_logs_by_default() -> None:
    line = _log(HASHREC_LOG_FORMAT="")
    assert line.endswith("WARNING services.word: refused model v2 (ünïcode)")


LOG_IN_A_SPAN = """
import logging
from opentelemetry import trace
from shared.config import setup_logging
from shared.tracing import setup_tracing
setup_logging()
assert setup_tracing()
with trace.get_tracer("test").start_as_current_span("call") as span:
    print(format(span.get_span_context().trace_id, "032x"), flush=True)
    logging.getLogger("services.user").warning("inside the call")
"""


def test_with_tracing_on_a_json_log_line_carries_its_trace_id(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", LOG_IN_A_SPAN], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).parents[1],
                         env={**os.environ, "HASHREC_LOG_FORMAT": "json",
                              "HASHREC_TRACING": "file",
                              "HASHREC_TRACING_FILE": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    trace_id = run.stdout.split()[0]
    record = json.loads(run.stderr.strip().splitlines()[-1])
    assert record["message"] == "inside the call" and record["trace_id"] == trace_id
    (spans,) = tmp_path.glob("*.jsonl")
    assert json.loads(spans.read_text())["context"]["trace_id"] == f"0x{trace_id}"


def test_an_unknown_tracing_mode_is_refused_naming_the_choices() -> None:
    run = subprocess.run([sys.executable, "-c",
                          "from shared.tracing import setup_tracing; setup_tracing()"],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parents[1],
                         env={**os.environ, "HASHREC_TRACING": "jaeger"})
    assert run.returncode == 1
    assert "choose off, console, file or otlp" in run.stderr


def test_a_failure_repeated_on_every_call_is_logged_once_a_period_with_its_count(
        caplog) -> None:
    import logging
    import time

    from shared.config import AtMostEvery

    logger = logging.getLogger("tests.at_most_every")
    logger.addFilter(AtMostEvery(seconds=0.2))
    with caplog.at_level(logging.WARNING, logger="tests.at_most_every"):
        for _ in range(50):
            logger.warning("recommender: %s: %s: %s", "user", "UNAVAILABLE", "refused")
        logger.warning("recommender: %s: %s: %s", "word", "UNAVAILABLE", "refused")
        logger.warning("%s not on model %s", ["word", "graph"], "v2")  # a list argument
        time.sleep(0.25)
        logger.warning("recommender: %s: %s: %s", "user", "UNAVAILABLE", "again")
    said = [record.getMessage() for record in caplog.records]
    assert said == ["recommender: user: UNAVAILABLE: refused",
                    "recommender: word: UNAVAILABLE: refused",  # another backend: its own
                    "['word', 'graph'] not on model v2",
                    "recommender: user: UNAVAILABLE: again (and 49 more like it in 0.2 s)"]
