"""Whoever stops a run, or shares its folder: SIGTERM and SIGHUP as Ctrl-C, at start-up too and as
PID 1 of a container; a second process refused by the run folder's lock, a killed one's lock no
block. Real processes and real signals; each signal is sent once the state it tests is reached."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import OFFLINE_ENV, ROOT, metrics, run_main, wait_for

LONG = ["--epochs", "1000", "--no-visdom", "--batch-size", "8"]


def start(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """main.py in a subprocess with the stop signals at their defaults (a background job of a
    non-interactive shell would start with SIGINT ignored)."""

    def defaults() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)

    return subprocess.Popen(
        [*prefix, sys.executable, str(ROOT / "main.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**OFFLINE_ENV, "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        preexec_fn=defaults,
    )


def finish(process: subprocess.Popen, signum: int | None = None) -> tuple[str, str]:
    """Send `signum` (if any) and return the output; kill and fail if it does not end within 60 s
    (a safety limit against a run left behind, not a measure of speed)."""
    if signum is not None:
        process.send_signal(signum)
    try:
        return process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("the process went on for 60 s after the signal")


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def resume_command(stdout: str) -> list[str]:
    return shlex.split(stdout.split("Resume with: ")[1].splitlines()[0])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_run_as_ctrl_c_does(data_dir, tmp_path, signum):
    out = tmp_path / "run"
    process = start(*LONG, "--data-dir", str(data_dir), "--out", str(out))
    wait_for(lambda: len(metrics(out)) >= 2, "two epochs", process)
    stdout, stderr = finish(process, signum)
    assert process.returncode == 128 + signum
    assert "Traceback" not in stderr and stderr.strip() == ""
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signal.Signals(signum).name}); ")
    assert f"holds epoch {saved}. Resume with:" in last
    assert [row["epoch"] for row in metrics(out)] == list(range(1, saved + 1))
    assert not (out / "checkpoint.pt.tmp").exists() and not (out / "run.lock").exists()
    resumed = subprocess.run(
        [*resume_command(stdout), "--epochs", str(saved + 1)], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(out)[-1]["epoch"] == saved + 1


def test_ctrl_c_right_after_an_epochs_line_keeps_that_epoch(data_dir, tmp_path):
    out = tmp_path / "run"
    process = start(*LONG, "--data-dir", str(data_dir), "--out", str(out))
    while not (line := process.stdout.readline()).startswith("epoch 2/"):
        assert line, "the run ended before its second epoch"
    stdout, stderr = finish(process, signal.SIGINT)
    assert process.returncode == 130 and "Traceback" not in stderr
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert saved >= 2 and f"holds epoch {saved}." in stdout


def test_sigterm_during_a_checkpoint_write_lets_the_write_finish(data_dir, tmp_path):
    out = tmp_path / "run"
    process = start(*LONG, "--data-dir", str(data_dir), "--out", str(out))
    wait_for(lambda: (out / "checkpoint.pt").exists(), "the first checkpoint", process)
    tmp = out / "checkpoint.pt.tmp"
    wait_for(lambda: tmp.exists(), "a checkpoint write", process, poll=0.0)
    stdout, stderr = finish(process, signal.SIGTERM)
    assert process.returncode == 143 and "Traceback" not in stderr
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert f"holds epoch {saved}." in stdout
    assert [row["epoch"] for row in metrics(out)] == list(range(1, saved + 1))
    assert not tmp.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_torch_loads_is_one_line(data_dir, tmp_path, signum):
    """The signal comes as soon as the program handles it (its SigCgt mask), while torch still
    loads on this machine; were it later, the run's own line would answer: one line all the same."""
    out = tmp_path / "run"
    process = start(*LONG, "--data-dir", str(data_dir), "--out", str(out))
    wait_for(lambda: catches(process.pid, signal.SIGTERM), "a SIGTERM handler", process, poll=0)
    stdout, stderr = finish(process, signum)
    assert process.returncode == 128 + signum
    assert "Traceback" not in stderr and stderr.strip() == ""
    assert stdout.strip().splitlines()[-1].startswith("interrupted")
    if "while starting" in stdout:  # the start-up's line, alone
        by = "" if signum == signal.SIGINT else " (SIGTERM)"
        assert stdout.strip() == f"interrupted{by} while starting: nothing was written"
    # nothing left that blocks the next try
    again = run_main(*LONG, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out))
    assert again.returncode == 0, again.stderr


def test_sigterm_stops_a_run_that_is_pid_1_of_its_namespace(data_dir, tmp_path):
    """As PID 1 of a container without an init, a signal without a handler is ignored."""
    unshare = shutil.which("unshare")
    namespace = (unshare, "--user", "--map-root-user", "--pid", "--fork", "--mount-proc")
    if not unshare or subprocess.run([*namespace, "true"], capture_output=True).returncode:
        pytest.skip("no unprivileged PID namespace here (unshare)")
    out = tmp_path / "run"
    process = start(*LONG, "--data-dir", str(data_dir), "--out", str(out), prefix=namespace)
    wait_for(lambda: len(metrics(out)) >= 1, "an epoch", process)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    child = int(children[0])  # main.py: unshare's only child
    nspid = Path(f"/proc/{child}/status").read_text().split("NSpid:")[1].split("\n")[0].split()
    assert nspid[-1] == "1"  # PID 1 in its namespace
    os.kill(child, signal.SIGTERM)
    stdout, stderr = finish(process)
    assert process.returncode == 143 and "Traceback" not in stderr
    assert "interrupted (SIGTERM); " in stdout and "Resume with:" in stdout


def test_a_run_folder_is_one_processs_and_a_killed_runs_lock_does_not_block(data_dir, tmp_path):
    out = tmp_path / "run"
    checkpoint = out / "checkpoint.pt"
    first = start(*LONG, "--data-dir", str(data_dir), "--out", str(out))
    wait_for(lambda: checkpoint.exists(), "the first checkpoint", first)
    for args in (
        [*LONG, "--data-dir", str(data_dir), "--out", str(out)],  # a new run into it
        ["--resume", str(checkpoint), "--epochs", "2000"],
        ["--generate", str(checkpoint)],
        ["--evaluate", str(checkpoint), "--eval-k", "5"],
    ):
        second = run_main(*args)
        assert second.returncode == 2, args
        error = second.stderr.strip().splitlines()
        assert len(error) == 1 and "Traceback" not in second.stderr
        assert f"{out} is in use by another run (process {first.pid}" in error[0]
    first.kill()  # kill -9: no chance to remove its lock file
    first.communicate()
    assert (out / "run.lock").exists()
    epochs = torch.load(checkpoint, weights_only=True)["epoch"]
    resumed = run_main("--resume", str(checkpoint), "--epochs", str(epochs + 1))
    assert resumed.returncode == 0, resumed.stderr
    assert [row["epoch"] for row in metrics(out)] == list(range(1, epochs + 2))
    assert not (out / "run.lock").exists()
