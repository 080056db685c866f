"""Against real Visdom servers on 127.0.0.1: windows, a lost server, a hung server, log replay."""

import base64
import io
import json
import re
import socket
import subprocess
import sys

import pytest
from PIL import Image

import main
from conftest import (
    OFFLINE_ENV,
    ROOT,
    SHORT,
    VisdomServer,
    free_port,
    interrupt,
    metrics,
    run_main,
    visdom_flags,
    wait_for,
)

WINDOWS = ("originals", "reconstructions", "samples", "traversal", "interpolation", "least_likely")


def windows(server: VisdomServer, env: str) -> dict:
    return json.loads(server.client(env).get_window_data(env=env))


def image_size(window: dict) -> tuple[int, int]:
    source = window["content"]["src"]
    return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).size


def last_epoch(out) -> dict:
    """The metrics of the last epoch in a run folder's metrics.jsonl."""
    return metrics(out)[-1]


def check_windows(shown: dict, epochs: int, row: dict, num_images: int = 16) -> None:
    """The windows of epoch `epochs`, whose metrics are `row`."""
    active = row["active_units"]
    side = 2 + int(num_images**0.5) * 30  # make_grid: 28-pixel images with 2-pixel padding
    for name in ("originals", "reconstructions", "samples"):
        assert image_size(shown[name]) == (side, side), name
    # A row per dimension, the active ones' filled (these tiny runs have some, at most 10).
    assert re.fullmatch(
        rf"traversal: {active} of 10 dims active, epoch {epochs}",
        shown["traversal"]["title"],
    ), shown["traversal"]["title"]
    assert 0 < active and image_size(shown["traversal"]) == (2 + 10 * 30, 2 + 10 * 30)
    assert shown["originals"]["title"] == "test images (fixed)"
    assert shown["reconstructions"]["title"] == f"reconstructions, epoch {epochs}"
    lines = {trace["name"]: trace for trace in shown["loss"]["content"]["data"]}
    assert lines["train"]["x"] == lines["test"]["x"] == list(range(1, epochs + 1))
    # the KL bars: the epoch's KL per dimension, the active ones in their own trace
    assert shown["least_likely"]["title"] == f"least likely, epoch {epochs}"
    assert image_size(shown["least_likely"]) == (2 + 4 * 50, 2 + 4 * 44)
    assert shown["kl_per_dim"]["title"] == f"KL per dim, epoch {epochs}"
    bars = {trace["name"]: trace for trace in shown["kl_per_dim"]["content"]["data"]}
    assert bars["active"]["x"] == bars["inactive"]["x"] == list(range(1, 11))
    per_dim = [a + b for a, b in zip(bars["active"]["y"], bars["inactive"]["y"])]
    assert per_dim == pytest.approx(row["test_kl_per_dim"], abs=1e-4)
    assert sum(per_dim) == pytest.approx(row["test_kl"], rel=1e-5)
    assert sum(nats > 0 for nats in bars["active"]["y"]) == active
    assert all(not (a and b) for a, b in zip(bars["active"]["y"], bars["inactive"]["y"]))


def test_server_receives_the_windows(visdom_server, data_dir, tmp_path):
    out = tmp_path / "run"
    code = main.main(
        [
            *SHORT,
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            *visdom_flags(visdom_server, "e2e"),
        ]
    )
    assert code == 0
    check_windows(windows(visdom_server, "e2e"), epochs=2, row=last_epoch(out))
    # A resumed run continues the plot; a new run in the same env starts it afresh.
    assert main.main(["--resume", str(out / "checkpoint.pt"), "--epochs", "3"]) == 0
    check_windows(windows(visdom_server, "e2e"), epochs=3, row=last_epoch(out))
    assert (
        main.main(
            [
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--num-images",
                "16",
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / "new"),
                *visdom_flags(visdom_server, "e2e"),
            ]
        )
        == 0
    )
    check_windows(windows(visdom_server, "e2e"), epochs=1, row=last_epoch(tmp_path / "new"))


def test_a_no_visdom_run_resumed_with_visdom_shows_its_windows(visdom_server, data_dir, tmp_path):
    out = tmp_path / "run"
    flags = [*visdom_flags(visdom_server, "resumed"), "--data-dir", str(data_dir)]
    assert main.main([*SHORT, "--no-visdom", "--out", str(out), *flags]) == 0
    resume = ["--resume", str(out / "checkpoint.pt")]
    assert main.main([*resume, "--epochs", "3"]) == 0  # the checkpoint's --no-visdom holds
    assert "resumed" not in visdom_server.client("main").get_env_list()
    assert main.main([*resume, "--epochs", "4", "--visdom"]) == 0
    check_windows(windows(visdom_server, "resumed"), epochs=4, row=last_epoch(out))


def test_no_server_trains_and_writes_pngs(data_dir, tmp_path):
    out = tmp_path / "run"
    result = run_main(
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--visdom-server",
        "http://127.0.0.1",
        "--visdom-port",
        str(free_port()),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "No Visdom server answers" in result.stdout and "python -m visdom.server" in result.stdout
    )
    assert all((out / f"{name}.png").exists() for name in (*WINDOWS, "latent_map", "kl_per_dim"))
    assert "Traceback" not in result.stderr


def test_a_server_that_never_answers_does_not_stall_training(data_dir, tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        out = tmp_path / "run"
        result = run_main(
            "--epochs",
            "3",
            "--batch-size",
            "64",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--visdom-server",
            "http://127.0.0.1",
            "--visdom-port",
            str(silent.getsockname()[1]),
            "--visdom-timeout",
            "1",
            "--visdom-retry",
            "0",
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    assert "No Visdom server answers" in result.stdout
    assert [row["epoch"] for row in metrics(out)] == [1, 2, 3]
    assert all((out / f"{name}.png").exists() for name in (*WINDOWS, "latent_map", "kl_per_dim"))


def test_a_logged_run_replays_into_a_server(visdom_server, data_dir, tmp_path):
    log = tmp_path / "visdom.log"
    assert (
        main.main(
            [
                *SHORT,
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / "run"),
                "--no-visdom",
                "--visdom-env",
                "replayed",
                "--visdom-log",
                str(log),
            ]
        )
        == 0
    )
    assert windows(visdom_server, "replayed") == {}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "replay_visdom_log.py"),
            str(log),
            "--server",
            "http://127.0.0.1",
            "--port",
            str(visdom_server.port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**OFFLINE_ENV, "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    check_windows(windows(visdom_server, "replayed"), epochs=2, row=last_epoch(tmp_path / "run"))


def test_a_server_killed_and_restarted_gets_the_windows_back(data_dir, tmp_path):
    server = VisdomServer(tmp_path / "env")
    server.env_path.mkdir()
    server.start()
    out = tmp_path / "run"
    run = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--epochs",
            "100000",
            "--batch-size",
            "32",
            "--num-images",
            "16",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            *visdom_flags(server, "restart"),
            "--visdom-retry",
            "0",
            "--visdom-timeout",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**OFFLINE_ENV, "PATH": ""},
    )

    def epochs_done() -> int:
        path = out / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    try:
        wait_for(
            lambda: epochs_done() >= 2 and "loss" in windows(server, "restart"),
            "the first windows",
            run,
        )
        server.stop()
        killed_at = epochs_done()
        wait_for(
            lambda: epochs_done() >= killed_at + 3, "training to go on without the server", run
        )
        (out / "reconstructions.png").unlink()
        wait_for(
            lambda: (out / "reconstructions.png").exists(), "PNGs while the server is down", run
        )
        server = VisdomServer(
            tmp_path / "env2", port=server.port
        )  # a new server, empty, on the same port
        server.env_path.mkdir()
        server.start()
        # an epoch's pushes arrive one window at a time (the loss before the traversal): wait
        # for all of them; a window that never comes back fails at wait_for's limit
        every_window = {*WINDOWS, "loss", "kl_per_dim"}
        wait_for(lambda: every_window <= set(windows(server, "restart")), "every window back", run)
        shown = windows(server, "restart")
        # the new server started after an epoch >= killed_at + 3 wrote its PNGs: what it shows
        # comes from that epoch's pushes or later ones
        assert int(shown["reconstructions"]["title"].split()[-1]) >= killed_at + 3
    finally:
        try:
            stdout, stderr = interrupt(run)
        finally:
            server.stop()
    assert "stopped answering" in stdout and "answers again" in stdout
    assert "Traceback" not in stderr
