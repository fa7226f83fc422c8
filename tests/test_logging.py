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
