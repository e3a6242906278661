"""`pool up|down|status` without real models: stand-in servers are tiny stdlib HTTP servers."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.tools import localmodels, pool, pool_config, pool_processes, pool_status
from gateway.tools.pool_config import Pool, PoolServer

FAKE_SERVER = """
import http.server, sys, time
time.sleep(float(sys.argv[2]))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/health", "/v1/models") else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private cache dir, and launches that run the stand-in server instead of an engine."""
    monkeypatch.setenv("CROWD_CACHE", str(tmp_path))

    def fake_launch(server: PoolServer) -> pool_config.Launch:
        script = os.environ.get("FAKE_SCRIPT", FAKE_SERVER)
        return pool_config.Launch([sys.executable, "-c", script, str(server.port), "0", *server.args], {})

    monkeypatch.setattr(pool, "launch", fake_launch)
    monkeypatch.setattr(pool, "POLL_S", 0.05)


def make_pool(*ports: int, timeout: float = 20.0) -> Pool:
    servers = [PoolServer(name=f"s{i}", engine="llamacpp", model="smollm2-135m-instruct", port=p)
               for i, p in enumerate(ports)]
    return Pool(servers=servers, ready_timeout_s=timeout)


def gone(pid: int) -> bool:
    return pool_processes.start_time(pid) is None


def test_up_status_down_round_trip() -> None:
    config = make_pool(free_port(), free_port())
    started = pool.pool_up(config, note=lambda _: None)
    try:
        assert [r.name for r in started] == ["s0", "s1"]
        assert set(pool_processes.read_state()) == {r.port for r in started}
        assert [s.state for s in pool_status.pool_status(config)] == ["ready", "ready"]
        assert pool.pool_up(config, note=lambda _: None) == []  # already running: nothing new
    finally:
        stopped = pool.pool_down(config, note=lambda _: None)
    assert {r.pid for r in stopped} == {r.pid for r in started}
    assert all(gone(r.pid) for r in started)
    assert pool_processes.read_state() == {}
    assert [s.state for s in pool_status.pool_status(config)] == ["stopped", "stopped"]


def test_taken_port_is_reported_and_nothing_starts() -> None:
    free, busy = free_port(), free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        with pytest.raises(pool_config.PoolError, match=rf"'s1' wants port {busy}"):
            pool.pool_up(make_pool(free, busy), note=lambda _: None)
        assert pool_processes.read_state() == {}
        assert pool_processes.port_free(free)
        assert [s.state for s in pool_status.pool_status(make_pool(free, busy))] == ["stopped", "port-taken"]


def test_server_that_dies_is_reported_with_its_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SCRIPT", "import sys; print('model file is corrupt'); sys.exit(3)")
    with pytest.raises(pool_config.PoolError, match=r"(?s)'s0' exited before it was ready.*model file is corrupt"):
        pool.pool_up(make_pool(free_port()), note=lambda _: None)
    assert pool_processes.read_state() == {}


def test_readiness_timeout_names_the_server_and_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SCRIPT", "import time; time.sleep(60)")
    notes: list[str] = []
    with pytest.raises(pool_config.PoolError, match=r"ready_timeout_s=0.5 s: 's0' \(log .*s0-\d+\.log\)"):
        pool.pool_up(make_pool(free_port(), timeout=0.5), note=notes.append)
    pid = int(re.search(r"pid (\d+)", notes[0]).group(1))
    assert gone(pid)
    assert pool_processes.read_state() == {}


def test_stale_record_is_never_signalled_and_is_pruned() -> None:
    port = free_port()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = pool_processes.Record("s0", port, sleeper.pid, start_time=1, argv=["x"], log="/dev/null")  # wrong start time
        with pool_processes.locked_state() as state:
            state[port] = stale
        assert not pool_processes.is_ours(stale)
        assert pool_status.pool_status(make_pool(port))[0].state == "exited"
        started = pool.pool_up(make_pool(port), note=lambda _: None)
        assert sleeper.poll() is None  # the unrelated process with the recorded PID is untouched
        pool.pool_down(make_pool(port), note=lambda _: None)
        assert len(started) == 1 and gone(started[0].pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_corrupt_state_file_reads_as_empty() -> None:
    pool_processes.state_dir().mkdir(parents=True)
    (pool_processes.state_dir() / "state.json").write_text("{not json")
    assert pool_processes.read_state() == {}


def test_state_file_round_trip_is_json_with_pids() -> None:
    record = pool_processes.Record("s0", 9001, 12345, 678, ["python", "-m", "x"], "/tmp/s0.log")
    with pool_processes.locked_state() as state:
        state[9001] = record
    raw = json.loads((pool_processes.state_dir() / "state.json").read_text())
    assert raw == {"servers": [{"name": "s0", "port": 9001, "pid": 12345, "start_time": 678,
                                "argv": ["python", "-m", "x"], "log": "/tmp/s0.log"}]}
    assert pool_processes.read_state() == {9001: record}


def test_stop_kills_a_server_that_ignores_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout and proc.stdout.readline() == b"up\n"
    record = pool_processes.Record("s0", 1, proc.pid, pool_processes.start_time(proc.pid) or 0, [], "/dev/null")
    began = time.monotonic()
    pool_processes.stop([record], grace_s=0.3)
    assert gone(proc.pid)  # stop() reaped it (it is our child), so Popen cannot see the signal
    assert 0.3 <= time.monotonic() - began < 5
    proc.stdout.close()
    proc.wait()


def test_running_pool_stops_what_it_started_on_error() -> None:
    config = make_pool(free_port())
    with pytest.raises(RuntimeError), pool.running_pool(config, note=lambda _: None) as statuses:
        assert [s.state for s in statuses] == ["ready"]
        pid = statuses[0].pid
        raise RuntimeError("boom")
    assert pid is not None and gone(pid)
    assert pool_processes.read_state() == {}


def test_running_pool_cleans_up_when_the_process_gets_sigterm(tmp_path: Path) -> None:
    port = free_port()
    script = f"""
import sys
from gateway.tools import pool
from gateway.tools.pool_config import Launch, Pool, PoolServer
pool.launch = lambda s: Launch([sys.executable, "-c", {FAKE_SERVER!r}, str(s.port), "0"], {{}})
config = Pool(servers=[PoolServer(name="s0", engine="llamacpp", model="gemma3-270m", port={port})])
with pool.running_pool(config, note=lambda _: None) as servers:
    print(servers[0].pid, flush=True)
    sys.stdin.read()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=os.environ | {"CROWD_CACHE": str(tmp_path)})
    assert proc.stdout is not None
    server_pid = int(proc.stdout.readline())
    assert not gone(server_pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    proc.stdin.close()
    proc.stdout.close()
    assert gone(server_pid)
    assert pool_processes.read_state() == {}


def test_running_pool_leaves_servers_it_did_not_start() -> None:
    config = make_pool(free_port())
    outer = pool.pool_up(config, note=lambda _: None)
    try:
        with pool.running_pool(config, note=lambda _: None) as statuses:
            assert statuses[0].pid == outer[0].pid
        assert not gone(outer[0].pid)
    finally:
        pool.pool_down(config, note=lambda _: None)


def test_a_port_held_by_a_differently_configured_pool_server_is_reported() -> None:
    port = free_port()
    pool.pool_up(make_pool(port), note=lambda _: None)
    try:
        changed = Pool(servers=[PoolServer(name="s0", engine="llamacpp", model="smollm2-135m-instruct", port=port,
                                           args=["--n_threads", "2"])])
        with pytest.raises(pool_config.PoolError, match=rf"port {port} is held by a pool server started with a different"):
            pool.pool_up(changed, note=lambda _: None)
    finally:
        pool.pool_down(make_pool(port), note=lambda _: None)
    assert pool_processes.read_state() == {}


def test_duplicate_ports_are_rejected() -> None:
    port = free_port()
    with pytest.raises(pool_config.PoolError, match="share a port"):
        pool.pool_up(make_pool(port, port), note=lambda _: None)


def test_cli_status_and_taken_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    config = tmp_path / "pool.yaml"
    config.write_text(f"""
pool:
  servers: [{{name: s0, engine: llamacpp, model: gemma3-270m, port: {port}}}]
members: [{{name: m, base_url: "http://127.0.0.1:{port}/v1", model: gemma3-270m, dialect: llamacpp}}]
""")
    parser = argparse.ArgumentParser()
    pool.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pool", "status", "--config", str(config)])
    assert args.func(args) == 3
    assert re.search(rf"s0\s+llamacpp\s+gemma3-270m\s+{port}\s+stopped", capsys.readouterr().out)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        args = parser.parse_args(["pool", "up", "--config", str(config)])
        assert args.func(args) == 1
    assert f"wants port {port}" in capsys.readouterr().err


def test_launch_command_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real launch, with the venv and model lookups stubbed
    monkeypatch.setattr(pool_config, "venv_python", lambda engine: Path(f"/venvs/{engine}/bin/python"))
    monkeypatch.setattr(pool_config, "model_path", lambda engine, model: Path(f"/models/{engine}/{model}"))
    vllm = pool_config.launch(PoolServer(name="v", engine="vllm", model="smollm2-135m-instruct", port=8101,
                                  args=["--max-num-seqs", "8"]))
    assert vllm.argv[:5] == ["/venvs/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model",
                             "/models/vllm/smollm2-135m-instruct"]
    assert vllm.argv[-6:] == ["--host", "127.0.0.1", "--port", "8101", "--max-num-seqs", "8"]
    assert vllm.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and vllm.env["HF_HUB_OFFLINE"] == "1"
    gemma = pool_config.launch(PoolServer(name="g", engine="llamacpp", model="gemma3-270m", port=8102))
    assert gemma.argv[1:3] == ["-m", "llama_cpp.server"]
    assert "--chat_format" in gemma.argv and "--model_alias" in gemma.argv


def test_engine_versions_match_engines_script() -> None:
    script = (Path(__file__).resolve().parents[2] / "deploy" / "engines.sh").read_text()
    assert f"VLLM_VERSION={localmodels.ENGINE_VERSIONS['vllm']}\n" in script
    assert f"LLAMACPP_VERSION={localmodels.ENGINE_VERSIONS['llamacpp']}\n" in script


def test_missing_engine_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(localmodels.ModelError, match="make engines"):
        localmodels.venv_python("vllm")
