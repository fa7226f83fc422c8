"""`hashrec serve`'s supervisor against an operator's mistakes: a second start is refused
with one line, a SIGKILLed supervisor leaves no child serving, SIGTERM before every
service is ready prints no banner, and the metrics ports move with --port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import SERVICES, Served, serving


def _serve_command(stack: dict, port: int) -> list[str]:
    return [sys.executable, "-m", "commands.cli", "serve", "--port", str(port),
            "--http-port", "0", "--models", str(stack["trained"].directory),
            "--user-model", str(stack["user_dir"])]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_a_second_serve_is_refused_and_a_killed_supervisor_leaves_no_orphan(
        stack: dict, tmp_path: Path) -> None:
    with serving(stack, tmp_path) as served:
        children = list(served.pids.values())
        assert len(children) == len(SERVICES)
        metrics = {f"HASHREC_{name.upper()}_METRICS_PORT": "0" for name in SERVICES}
        same_folder = subprocess.run(
            _serve_command(stack, served.port), capture_output=True, text=True, timeout=60,
            env={**os.environ, **metrics, "HASHREC_MODELS": str(tmp_path / "models")})
        assert same_folder.returncode == 2
        assert f"already running on {tmp_path / 'models'} (pid {served.process.pid}" in \
            same_folder.stderr
        elsewhere = subprocess.run(
            _serve_command(stack, served.port), capture_output=True, text=True, timeout=60,
            env={**os.environ, **metrics, "HASHREC_MODELS": str(tmp_path / "other")})
        assert elsewhere.returncode == 2
        assert f"port {served.port} is in use" in elsewhere.stderr
        for result in (same_folder, elsewhere):
            assert result.stderr.strip().count("\n") == 0 and "Traceback" not in \
                result.stderr
        os.kill(served.process.pid, signal.SIGKILL)
        served.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)], "orphans kept running"


def test_sigterm_before_every_service_is_ready_prints_no_banner(stack: dict,
                                                               tmp_path: Path) -> None:
    from tests.servers import free_ports_in_a_row

    port = free_ports_in_a_row(5)
    process = subprocess.Popen(
        _serve_command(stack, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "HASHREC_MODELS": str(tmp_path),
                        "HASHREC_USER_STATE": str(tmp_path / "state"),
                        **{f"HASHREC_{n.upper()}_METRICS_PORT": "0" for n in SERVICES}})
    served = Served(process, port, tmp_path)
    served.wait_for(r"vision: started \(pid")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 1
    time.sleep(0.3)  # the reader thread takes the last lines
    assert not any(line.startswith("serving ") for line in served.lines), served.lines
    assert any("stopped before every service was ready" in line for line in served.lines)


def test_the_metrics_ports_move_with_the_port_unless_set(monkeypatch) -> None:
    from commands.cli.processes import metrics_ports

    for name in SERVICES:
        monkeypatch.delenv(f"HASHREC_{name.upper()}_METRICS_PORT", raising=False)
    assert metrics_ports(50050, None) == {"recommender": 9100, "vision": 9101, "word": 9102,
                                          "graph": 9103, "user": 9104}
    moved = metrics_ports(51050, None)
    assert sorted(moved.values()) == list(range(10100, 10105))
    assert metrics_ports(51050, 7000)["user"] == 7004
    monkeypatch.setenv("HASHREC_USER_METRICS_PORT", "0")
    assert "user" not in metrics_ports(50050, None)


def test_a_ready_check_answered_by_a_process_other_than_the_child_fails() -> None:
    """A server left over from another run answers health SERVING on the child's port:
    the supervisor's check sees the port is not held by its child."""
    import asyncio

    from commands.supervisor import grpc_ready, listening_pids
    from tests.servers import LoopThread, serving_health_server

    loop = LoopThread()
    server = serving_health_server(loop)
    try:
        port = int(server.address.rsplit(":", 1)[1])
        assert listening_pids(port) == {os.getpid()}
        check = grpc_ready(server.address)
        assert asyncio.run(check(os.getpid())) is True  # its own port
        assert asyncio.run(check(os.getppid())) is False  # another process's answer
    finally:
        loop.call(server.stop())
        loop.close()


def test_a_second_serve_while_the_first_still_trains_is_refused_before_training(
        data_dir: Path, tmp_path: Path) -> None:
    """The pid file is locked from the start, so two serves never train side by side; a
    rollout meanwhile finds nothing to switch and does not end the training."""
    from tests.servers import free_ports_in_a_row

    env = {**os.environ, "HASHREC_MODELS": str(tmp_path / "models"), "PYTHONUNBUFFERED": "1",
           "HASHREC_DATA_ROOT": str(data_dir)}
    # metrics on ports of their own: the defaults beside a random --port are 9100-9104,
    # which any other serve on the machine may hold (then this one refuses to start)
    command = [sys.executable, "-m", "commands.cli", "serve", "--port",
               str(free_ports_in_a_row(5)), "--http-port", "0", "--metrics-port",
               str(free_ports_in_a_row(5)), "--train", "food:food"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env)
    served = Served(first, 0, tmp_path)
    try:
        served.wait_for(r"^no trained model under .*: training food:food first")
        second = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        assert second.returncode == 2
        assert second.stderr.strip().count("\n") == 0, second.stderr
        assert f"already running on {tmp_path / 'models'} (pid {first.pid}" in second.stderr
        assert "no trained model" not in second.stdout  # it trained nothing
        rollout = subprocess.run([sys.executable, "-m", "commands.cli", "rollout"],
                                 capture_output=True, text=True, timeout=60, env=env)
        assert rollout.returncode == 0
        served.wait_for("still preparing the models; nothing to roll out yet")
        assert first.poll() is None  # SIGHUP did not end the training
        first.send_signal(signal.SIGTERM)  # stops the training in one line, like Ctrl-C
        assert first.wait(timeout=60) == 130
        served.wait_for("^hashrec serve: stopped while preparing the models")
        assert not any("Traceback" in line for line in served.lines), served.lines
        assert (tmp_path / "models" / "serve.pid").read_text() == ""
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(timeout=30)
    # killed, its pid file holds no lock: the next serve takes it over (then is stopped)
    third = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env)
    try:
        Served(third, 0, tmp_path).wait_for(r"^no trained model under")
    finally:
        third.kill()
        third.wait(timeout=30)


def test_a_model_named_directly_is_verified_before_any_service_starts(
        stack: dict, tmp_path: Path) -> None:
    import shutil

    tampered = tmp_path / stack["trained"].directory.name
    shutil.copytree(stack["trained"].directory, tampered)
    victim = next(path for path in sorted(tampered.iterdir()) if path.suffix == ".npy")
    victim.write_bytes(victim.read_bytes()[:-4] + b"\0\0\0\1")
    result = subprocess.run(
        [*_serve_command(stack, 1)[:9], str(tampered), *_serve_command(stack, 1)[10:]],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "HASHREC_MODELS": str(tmp_path / "models")})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert f"model {tampered.name}: " in result.stderr and victim.name in result.stderr
    assert ": started (pid" not in result.stdout + result.stderr  # no child was started


def test_rollout_after_the_serve_stopped_or_was_killed_says_so(tmp_path: Path) -> None:
    def rollout() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "commands.cli", "rollout"],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "HASHREC_MODELS": str(tmp_path)})

    (tmp_path / "serve.pid").write_text("")  # what a stopped serve leaves
    stopped = rollout()
    assert stopped.returncode == 2
    assert "no running `hashrec serve` found" in stopped.stderr
    assert "the last `hashrec serve` on this folder stopped" in stopped.stderr
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "serve.pid").write_text(f"{gone.pid}\n")  # what a killed serve leaves
    killed = rollout()
    assert killed.returncode == 2
    assert f"pid {gone.pid} is not running" in killed.stderr and "Errno" not in killed.stderr


def test_a_taken_port_is_refused_before_any_training(data_dir: Path, tmp_path: Path) -> None:
    import socket

    from tests.servers import free_ports_in_a_row

    port = free_ports_in_a_row(5)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 2))
        result = subprocess.run(
            [sys.executable, "-m", "commands.cli", "serve", "--port", str(port),
             "--http-port", "0", "--train", "food:food"], capture_output=True, text=True,
            timeout=60, env={**os.environ, "HASHREC_MODELS": str(tmp_path / "models"),
                             "HASHREC_DATA_ROOT": str(data_dir)})
    assert result.returncode == 2
    assert f"port {port + 2} is in use" in result.stderr
    assert "no trained model" not in result.stdout  # refused before it trained


def test_a_model_of_the_wrong_kind_is_refused_in_one_line(stack: dict,
                                                          tmp_path: Path) -> None:
    """Named to serve, or to one service: the user model where the image model goes."""
    command = _serve_command(stack, 1)
    command[command.index("--models") + 1] = str(stack["user_dir"])
    serve = subprocess.run(command, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "HASHREC_MODELS": str(tmp_path / "models")})
    word = subprocess.run(
        [sys.executable, "-m", "services.word.server"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "HASHREC_MODEL_DIR": str(stack["user_dir"]),
                         "HASHREC_WORD_PORT": "0", "HASHREC_WORD_METRICS_PORT": "0"})
    for result in (serve, word):
        assert result.returncode == 2
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1].endswith(
            f"{stack['user_dir']} is a 'user-tensor-effects' model, not 'image-to-hashtag'")
    assert ": started (pid" not in serve.stdout + serve.stderr


def test_a_model_folder_whose_only_version_is_damaged_is_refused_not_trained_over(
        stack: dict, tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    damaged = models / stack["trained"].directory.name
    shutil.copytree(stack["trained"].directory, damaged)
    victim = next(path for path in sorted(damaged.iterdir()) if path.suffix == ".npy")
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    result = subprocess.run(
        [sys.executable, "-m", "commands.cli", "serve", "--port", "1", "--http-port", "0"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "HASHREC_MODELS": str(models)})
    assert result.returncode == 2
    assert "no trained model" not in result.stdout  # it did not start training over it
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hashrec serve: ") and "no image-to-hashtag version verifies" in last
    assert victim.name in last


def test_a_pid_file_it_cannot_write_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "serve.pid").mkdir(parents=True)  # a folder where the file should be
    result = subprocess.run(
        [sys.executable, "-m", "commands.cli", "serve", "--port", "1", "--http-port", "0"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "HASHREC_MODELS": str(models)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"hashrec serve: cannot write its pid file {models / 'serve.pid'}")
    assert "HASHREC_MODELS must be a folder hashrec serve may write" in result.stderr
