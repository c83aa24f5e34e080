from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Optional

import pytest

HERE = pathlib.Path(__file__).resolve().parent
CLIENT_ROOT = HERE.parent
REPO_ROOT = CLIENT_ROOT.parent.parent
FIXTURE_IMAGES = REPO_ROOT / "fixtures" / "images"
# The named-rewards server (`rewards_server`): tiny-internvl-hf with three rewards.
REWARDS_MODEL = REPO_ROOT / "fixtures" / "models" / "tiny-internvl-hf"
SWIFT_ADAPTER = REPO_ROOT / "fixtures" / "adapters" / "hf-llm-swift"
STRICT_INSTRUCTION = "Is '{prompt}' rendered exactly? Answer yes or no."

sys.path.insert(0, str(HERE))  # fake_server


# Every subprocess the tests start from this (grpc-using) process passes close_fds=False: with
# close_fds=True, Python closes grpc's epoll fd in the forked child before exec while grpc's fork
# handler has restarted its poller thread there, which can abort the child with "epoll_wait
# error: Bad file descriptor" (grpc/grpc#43055; seen with Python 3.9, whose subprocess forks
# instead of using vfork). Python's own fds are non-inheritable anyway (PEP 446).
SUBPROCESS_KW = {"close_fds": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> pathlib.Path:
    return pathlib.Path(os.environ.get("REWARDDANCE_BIN") or REPO_ROOT / "target" / "debug" / "rewarddance")


def _serve_unavailable_reason(binary: pathlib.Path):
    if not binary.exists():
        return f"server binary {binary} not found (build it: cargo build -p rewarddance-cli, or set REWARDDANCE_BIN)"
    try:
        p = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True, timeout=30,
                           **SUBPROCESS_KW)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{binary} serve --help failed: {e}"
    if p.returncode != 0:
        return f"{binary} has no `serve` subcommand yet (`serve --help` exited {p.returncode})"
    return None


class RealServer:
    def __init__(self, proc: subprocess.Popen, target: str, metrics_port: int, log: pathlib.Path):
        self.proc = proc
        self.target = target
        self.metrics_port = metrics_port
        self.log = log

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_real_server(tmp_dir: pathlib.Path, *extra_args: str, port: Optional[int] = None):
    """Starts `rewarddance serve` with extra flags on free ports (the gRPC one is `port` when
    given: a restart on the same address), waits for SERVING, and returns (RealServer, stop).
    Skips (or fails, with REWARDDANCE_REQUIRE_SERVER=1) when the binary has no `serve`
    subcommand."""
    binary = server_binary()
    reason = _serve_unavailable_reason(binary)
    if reason:
        if os.environ.get("REWARDDANCE_REQUIRE_SERVER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from rewarddance import RewardClient

    port, mport = port or free_port(), free_port()
    log = tmp_dir / "server.log"
    logf = open(log, "wb")
    proc = subprocess.Popen(
        [str(binary), "serve", "--addr", f"127.0.0.1:{port}", "--metrics-addr", f"127.0.0.1:{mport}", *extra_args],
        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **SUBPROCESS_KW,
    )
    server = RealServer(proc, f"127.0.0.1:{port}", mport, log)

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logf.close()

    try:
        with RewardClient(server.target) as probe:
            end = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"server exited with {proc.returncode} before serving:\n{server.log_tail()}")
                if probe.health(timeout=1.0):
                    break
                if time.monotonic() > end:
                    pytest.fail(f"server not SERVING after 120 s:\n{server.log_tail()}")
                time.sleep(0.1)
    except BaseException:
        stop()
        raise
    return server, stop


@pytest.fixture(scope="session")
def real_server(tmp_path_factory):
    """The real `rewarddance serve` on the bundled tiny model, on free local ports."""
    server, stop = start_real_server(tmp_path_factory.mktemp("server"))
    try:
        yield server
    finally:
        stop()


def _skip_or_fail(reason: str):
    if os.environ.get("REWARDDANCE_REQUIRE_SERVER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def write_rewards_file(directory: pathlib.Path) -> pathlib.Path:
    """A rewards file (TOML) declaring `default` (the base model), `strict` (the base with its
    own pointwise instruction) and `swift` (the ms-swift-style LLM LoRA fixture, a path relative
    to the file as the format takes it)."""
    path = directory / "rewards.toml"
    adapter = os.path.relpath(SWIFT_ADAPTER, directory)
    path.write_text("[rewards.default]\n\n"
                    f"[rewards.strict]\ninstruction = \"{STRICT_INSTRUCTION}\"\n\n"
                    f"[rewards.swift]\nadapter = \"{adapter}\"\n")
    return path


@pytest.fixture(scope="session")
def rewards_server(tmp_path_factory):
    """The real `rewarddance serve --model tiny-internvl-hf --rewards FILE` with the rewards of
    `write_rewards_file` (swift's adapter is the only one, so it is applied per item, unmerged).
    Skips like `real_server`, and when the binary has no `--rewards`."""
    binary = server_binary()
    reason = _serve_unavailable_reason(binary)
    if reason is None:
        p = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True, timeout=30,
                           **SUBPROCESS_KW)
        if "--rewards" not in p.stdout:
            reason = f"{binary} serve has no --rewards (named rewards) yet"
    if reason:
        _skip_or_fail(reason)
    d = tmp_path_factory.mktemp("rewards")
    server, stop = start_real_server(d, "--model", str(REWARDS_MODEL), "--rewards", str(write_rewards_file(d)),
                                     "--no-metrics")
    try:
        yield server
    finally:
        stop()


@pytest.fixture
def fake():
    from fake_server import FakeServer

    with FakeServer() as s:
        yield s


@pytest.fixture(scope="session")
def fixture_pngs():
    paths = sorted(FIXTURE_IMAGES.glob("*.png"))
    assert paths, f"no fixture images in {FIXTURE_IMAGES}"
    return paths
