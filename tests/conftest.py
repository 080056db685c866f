"""Fixtures: tiny MNIST-format files, a real Visdom server on 127.0.0.1, ways to run main.py."""

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # explore.py, screenshot_visdom.py
from helpers.data import idx_bytes  # (also imported from here by test_faults.py)

N_TRAIN, N_TEST = 512, 128
# The devices the training and evaluation tests run on: the CPU, and CUDA where there is one.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# A short run of main.py on the tiny data; QUICK without Visdom.
SHORT = ["--epochs", "2", "--batch-size", "64", "--num-images", "16"]
QUICK = [*SHORT, "--no-visdom"]
# Any download attempt goes to a closed loopback port: tests never send traffic off this machine.
OFFLINE_ENV = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost",
    "NO_PROXY": "127.0.0.1,localhost",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes of 28x28 strokes (bars and rings at class-dependent places), with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[:28, :28]
    images = np.zeros((n, 28, 28))
    for i, label in enumerate(labels):
        cy, cx = 14 + rng.normal(0, 1.5, 2)
        radius = 4 + label % 5 + rng.normal(0, 0.5)
        ring = np.abs(np.hypot(yy - cy, xx - cx) - radius) < 1.5
        bar = (np.abs(xx - cx - (label - 5)) < 1.5) & (np.abs(yy - cy) < 9) if label >= 5 else 0
        images[i] = np.clip((ring | bar) * 255 * rng.uniform(0.7, 1.0), 0, 255)
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(raw: Path, gz: bool = False) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        images, labels = synthetic_digits(n, seed)
        for name, array in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            data = idx_bytes(array)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A --data-dir holding tiny MNIST files, read by torchvision's own loader."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "MNIST" / "raw")
    return root


@pytest.fixture
def fresh_data_dir(tmp_path) -> Path:
    """A private copy of the tiny MNIST files, for tests that damage them."""
    root = tmp_path / "data"
    write_mnist(root / "MNIST" / "raw")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VisdomServer:
    """`python -m visdom.server` on 127.0.0.1 and a free port, in its own env folder."""

    def __init__(self, env_path: Path, port: int | None = None) -> None:
        self.env_path, self.port, self.process = env_path, port or free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import visdom

        package = Path(visdom.__file__).parent  # the assets, and the user style the page names
        if not all(
            (package / name).exists() for name in ("static/version.built", "user/style.css")
        ):
            pytest.fail("Visdom's assets are not in place: run `make setup` (README, Set up)")
        self.log = open(self.env_path / "server.log", "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "visdom.server",
                "-port",
                str(self.port),
                "-bind_local",
                "-env_path",
                str(self.env_path),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    "the Visdom server exited: "
                    f"{(self.env_path / 'server.log').read_text()[-2000:]}"
                )
            try:
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    self.url, timeout=2
                )
            except OSError:
                time.sleep(0.2)
                continue
            # Offline, a file missing from tools/visdom_assets.py's list is a download error.
            log = (self.env_path / "server.log").read_text()
            if "while downloading" in log:
                self.stop()
                pytest.fail(f"the Visdom server tried to download page assets:\n{log[-2000:]}")
            return
        self.stop()
        pytest.fail("the Visdom server did not answer within 60 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.log.close()

    def client(self, env: str = "main"):
        from visdom import Visdom

        return Visdom(
            server="http://127.0.0.1",
            port=self.port,
            env=env,
            use_incoming_socket=False,
            raise_exceptions=True,
        )


def visdom_flags(server: VisdomServer, env: str) -> list[str]:
    """The flags of main.py and explore.py that point them at `server`, in environment `env`."""
    return [
        "--visdom-server",
        "http://127.0.0.1",
        "--visdom-port",
        str(server.port),
        "--visdom-env",
        env,
    ]


@pytest.fixture
def visdom_server(tmp_path):
    server = VisdomServer(tmp_path / "visdom_env")
    server.env_path.mkdir()
    server.start()
    yield server
    server.stop()


def metrics(out: Path) -> list[dict]:
    """The rows of a run folder's metrics.jsonl, read as main.py reads them."""
    from helpers.checkpoint import read_metrics

    return read_metrics(out / "metrics.jsonl")


def run_main(*args: str, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """Run main.py in a subprocess with a loopback-only network, returning its output."""
    env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory) -> Path:
    """The folder of a two-epoch run on the tiny MNIST files (it has active latent dimensions)."""
    import main

    out = tmp_path_factory.mktemp("trained") / "run"
    assert (
        main.main(
            [
                *SHORT,
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
                "--no-visdom",
            ]
        )
        == 0
    )
    return out


def start_explorer(checkpoint: Path, server: VisdomServer, env: str) -> subprocess.Popen:
    """explore.py in a subprocess against `server`, with a loopback-only network."""
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tools" / "explore.py"),
            str(checkpoint),
            *visdom_flags(server, env),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"},
    )


def interrupt(process: subprocess.Popen, seconds: float = 60) -> tuple[str, str]:
    """Ctrl-C a process and return its (stdout, stderr); kill it and fail if it does not end
    within `seconds` (a safety limit against a run left behind, not a measure of speed)."""
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the process went on for {seconds} s after Ctrl-C")


def wait_for(
    condition,
    what: str,
    process: subprocess.Popen | None = None,
    seconds: float = 120,
    poll: float = 0.1,
) -> None:
    """Poll until condition(); fail if `process` exits first, or after `seconds`: a safety limit
    against a hang, never a measure of speed."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process exited while waiting for {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)
