"""Faults a long run meets: kill -9, a diverging loss, damaged files, bad checkpoints, bad flags."""

import errno
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from conftest import (
    DEVICES,
    N_TRAIN,
    OFFLINE_ENV,
    QUICK,
    ROOT,
    idx_bytes,
    metrics,
    synthetic_digits,
    wait_for,
    write_mnist,
)
from helpers import checkpoint, flags, likelihood, messages, runfiles

CPUS = len(os.sched_getaffinity(0))


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def appeared(path, run: subprocess.Popen):
    """A condition for wait_for: `path` exists, or `run` has ended (a resumed run may finish)."""
    return lambda: path.exists() or run.poll() is not None


def test_kill_9_at_random_moments_never_leaves_a_bad_checkpoint_or_metrics(data_dir, tmp_path):
    out = tmp_path / "run"
    checkpoint = out / "checkpoint.pt"
    # more epochs than the runs can train before their kills, however fast the machine: a run
    # that finished them all would leave nothing to resume
    epochs, rng, kills = 10_000, random.Random(0), 0
    flags = [
        "--epochs",
        str(epochs),
        "--batch-size",
        "16",
        "--no-visdom",
        "--num-images",
        "4",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
    ]
    while kills < 10:  # ten kills, however long they take (each step waits for a state)
        before = torch.load(checkpoint, weights_only=True)["epoch"] if checkpoint.exists() else 0
        if before >= epochs - 2:
            break
        args = ["--resume", str(checkpoint), *flags[:2]] if checkpoint.exists() else flags
        (out / "checkpoint.pt.tmp").unlink(missing_ok=True)  # so that its appearance marks a write
        run = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), *args],
            stdout=subprocess.PIPE,
            text=True,
            stderr=subprocess.DEVNULL,
            env={**OFFLINE_ENV, "PATH": "", "PYTHONUNBUFFERED": "1"},
        )
        first_line = run.stdout.readline()  # printed once the data is loaded, just before training
        assert (
            f"epochs {before + 1}..{epochs}" in first_line
        )  # continues after the last finished epoch
        # a kill comes after the first checkpoint, however slow the machine
        wait_for(appeared(checkpoint, run), "the first checkpoint", poll=0.01)
        if kills % 2:  # during a checkpoint write: as soon as the temporary file appears
            wait_for(appeared(out / "checkpoint.pt.tmp", run), "a checkpoint write", poll=0.0)
        else:  # at a random moment, mostly inside an epoch
            time.sleep(rng.uniform(0.0, 1.5))
        run.send_signal(signal.SIGKILL)
        run.communicate()
        kills += 1
        assert torch.load(checkpoint, weights_only=True)["epoch"] >= before  # always loads
    assert kills >= 6
    last = torch.load(checkpoint, weights_only=True)["epoch"] + 2  # two epochs more, unkilled
    finish = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--resume", str(checkpoint), "--epochs", str(last)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finish.returncode == 0, finish.stderr
    rows = metrics(out)
    assert [row["epoch"] for row in rows] == list(range(1, last + 1))


@pytest.mark.parametrize("device", DEVICES)
def test_a_diverging_loss_stops_at_once_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, capsys, device
):
    out = tmp_path / "run"
    argv = [*QUICK, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)]
    assert main.main([*argv, "--device", device]) == 0
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    capsys.readouterr()
    resume = ["--resume", str(out / "checkpoint.pt"), "--epochs", "3", "--lr", "1e30"]
    assert main.main([*resume, "--device", device]) == 1
    message = error_line(capsys)
    assert (
        "non-finite at epoch 2, step" in message
        and "keeps epoch 1" in message
        and "--lr" in message
    )
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert kept["epoch"] == 1
    assert json.loads((out / "args.json").read_text())["lr"] == kept["args"]["lr"] != 1e30
    for name, tensor in kept["model"].items():
        assert torch.equal(tensor, good["model"][name])
    assert [row["epoch"] for row in metrics(out)] == [1]


def test_a_run_that_diverges_at_once_writes_no_checkpoint(data_dir, tmp_path, capsys):
    assert (
        main.main(
            [
                *QUICK,
                "--epochs",
                "2",
                "--lr",
                "1e30",
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 1
    )
    assert "no checkpoint was written" in error_line(capsys)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def damage(raw, name: str, kind: str) -> None:
    path = raw / name
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "magic":
        path.write_bytes(b"\x00\x00\x08\x09" + data[4:])
    elif kind == "size":
        images, _ = synthetic_digits(N_TRAIN, 0)
        path.write_bytes(idx_bytes(np.pad(images, ((0, 0), (2, 2), (0, 0)))))  # 32x28 images
    elif kind == "count":
        _, labels = synthetic_digits(N_TRAIN, 0)
        path.write_bytes(idx_bytes(labels[:-1]))


@pytest.mark.parametrize(
    "name, kind, words",
    [
        ("train-images-idx3-ubyte", "truncated", "truncated"),
        ("train-labels-idx1-ubyte", "truncated", "truncated"),
        ("t10k-images-idx3-ubyte", "magic", "magic number"),
        ("train-images-idx3-ubyte", "size", "32x28 images"),
        ("train-labels-idx1-ubyte", "count", f"{N_TRAIN} images but"),
    ],
)
def test_a_damaged_data_file_is_one_clear_error_naming_it(
    fresh_data_dir, tmp_path, capsys, name, kind, words
):
    raw = fresh_data_dir / "MNIST" / "raw"
    damage(raw, name, kind)
    assert (
        main.main(
            [
                *QUICK,
                "--epochs",
                "1",
                "--data-dir",
                str(fresh_data_dir),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 1
    )
    message = error_line(capsys)
    assert str(raw / name) in message and words in message


def exits_with_usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    assert exit_info.value.code == 2
    return error_line(capsys)


def test_a_checkpoint_of_another_architecture_names_the_mismatch(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main.main(
            [
                *QUICK,
                "--epochs",
                "1",
                "--latent-dim",
                "20",
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    for mode in ("--resume", "--evaluate", "--generate"):
        message = exits_with_usage_error(
            [mode, str(out / "checkpoint.pt"), "--epochs", "2", "--latent-dim", "10"], capsys
        )
        assert "the checkpoint has latent_dim 20, the flags say 10" in message
    message = exits_with_usage_error(
        ["--resume", str(out / "checkpoint.pt"), "--epochs", "2", "--hidden", "128"], capsys
    )
    assert "hidden [256, 64], the flags say [128]" in message


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, capsys, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    assert "is not a checkpoint written by main.py" in exits_with_usage_error(
        ["--resume", str(path), "--epochs", "2"], capsys
    )
    torch.save({"model": {}}, path)
    assert "is not a checkpoint written by main.py" in exits_with_usage_error(
        ["--evaluate", str(path)], capsys
    )


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--epochs", "0"], "--epochs: must be greater than 0"),
        (["--epochs", "-3"], "--epochs: must be greater than 0"),
        (["--batch-size", "0"], "--batch-size: must be greater than 0"),
        (["--latent-dim", "0"], "--latent-dim: must be greater than 0"),
        (["--hidden", "256,x"], "--hidden: '256,x' is not a comma-separated list"),
        (["--hidden", "256,0"], "--hidden: widths must be greater than 0"),
        (["--lr", "0"], "--lr: must be greater than 0"),
        (["--lr", "-0.1"], "--lr: must be greater than 0"),
        (["--lr", "nan"], "--lr: must be greater than 0"),
        (["--beta", "-1"], "--beta: must be at least 0"),
        (["--visdom-port", "99999"], "--visdom-port: a port is 1 to 65535"),
        (["--resume", "a.pt", "--evaluate", "b.pt"], "not allowed with argument --resume"),
        (["--device", "cuda"], "--device cuda: torch finds no CUDA device"),
        (["--out", "/proc/no-such-run"], "--out /proc/no-such-run cannot be written"),
        (["--seed", "99999999999999999999"], "--seed: a seed is -2^63 to 2^64-1"),
        (["--threads", "999"], f"--threads: this machine lets the run use {CPUS} CPUs"),
        (["--visdom-server", "notaurl"], "--visdom-server: 'notaurl' is not an address such"),
        (["--visdom-server", "http://localhost:8097"], "(scheme and host only; the port goes"),
        (["--visdom-log", "/proc/no/log"], "--visdom-log /proc/no/log cannot be written (No such"),
    ],
)
def test_bad_flags_are_an_argparse_error_before_any_work(tmp_path, capsys, flags, words):
    if flags == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = [
        "--data-dir",
        str(tmp_path / "no-data"),
        "--no-visdom",
        "--out",
        str(tmp_path / "run"),
        *flags,
    ]
    message = exits_with_usage_error(argv, capsys)
    assert words in message
    assert not (tmp_path / "no-data").exists()


def test_an_out_folder_holding_a_run_is_not_overwritten(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main.main([*QUICK, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert "--resume" in exits_with_usage_error(
        [*QUICK, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)], capsys
    )
    assert (out / "checkpoint.pt").read_bytes() == before


class FullDisk:
    """A file whose writes fail as on a full disk, after writing half of what they were given."""

    def __init__(self, file) -> None:
        self.file = file

    def write(self, data) -> int:
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self) -> "FullDisk":
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()


@pytest.mark.parametrize("full_at", ["checkpoint", "metrics line"])
def test_a_full_disk_ends_in_one_line_and_keeps_the_checkpoint_with_its_metrics(
    data_dir, tmp_path, capsys, monkeypatch, full_at
):
    out = tmp_path / "run"
    mode = "wb" if full_at == "checkpoint" else "a"  # how save_checkpoint opens each file
    opened = []

    def open_on_a_disk_that_fills(path, how="r", *args, **kwargs):
        file = open(path, how, *args, **kwargs)
        opened.append(how)
        return FullDisk(file) if how == mode and opened.count(how) == 2 else file  # epoch 2

    monkeypatch.setattr(checkpoint, "open", open_on_a_disk_that_fills, raising=False)
    run = [*QUICK, "--epochs", "3", "--data-dir", str(data_dir), "--out", str(out)]
    assert main.main(run) == 1
    message = error_line(capsys)
    assert f"writing {out / 'checkpoint.pt'} failed (No space left on device)" in message
    assert f"{out / 'checkpoint.pt'} of epoch 1 is intact" in message
    assert f"--resume {out / 'checkpoint.pt'}" in message
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    lines = (out / "metrics.jsonl").read_text()
    assert lines.count("\n") == 1 and lines.endswith("\n")  # no torn line of epoch 2
    assert [row["epoch"] for row in metrics(out)] == [1]
    assert not (out / "checkpoint.pt.tmp").exists()
    monkeypatch.undo()  # space freed: the printed command goes on from epoch 1
    assert main.main(["--resume", str(out / "checkpoint.pt"), "--epochs", "3"]) == 0
    assert [row["epoch"] for row in metrics(out)] == [1, 2, 3]


def test_ctrl_c_waits_for_the_write_in_flight(data_dir, tmp_path, capsys, monkeypatch):
    # Epoch 1's write holds until the run has reported its Ctrl-C (or 5 s have passed): a run
    # that did not wait for it would report that nothing was saved.
    out, reported = tmp_path / "run", threading.Event()
    real_save, real_saved, real_train_epoch = (
        runfiles.save_checkpoint,
        messages.saved_so_far,
        main.train_epoch,
    )

    def slow_save(*args) -> None:
        reported.wait(5)
        real_save(*args)

    def saved_so_far(*args) -> str:
        reported.set()
        return real_saved(*args)

    def train_epoch(*args, **kwargs):
        if args[3].epoch == 2:  # epoch 2 starts while epoch 1 is being written: Ctrl-C
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(runfiles, "save_checkpoint", slow_save)
    monkeypatch.setattr(messages, "saved_so_far", saved_so_far)
    monkeypatch.setattr(main, "train_epoch", train_epoch)
    run = [*QUICK, "--epochs", "3", "--data-dir", str(data_dir), "--out", str(out)]
    assert main.main(run) == 130
    assert "holds epoch 1. Resume with:" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [row["epoch"] for row in metrics(out)] == [1]
    assert {"samples.png", "latent_map.png"} <= {path.name for path in out.iterdir()}


def test_a_huge_beta_stops_at_a_non_finite_epoch_loss_naming_beta(data_dir, tmp_path, capsys):
    """β = 1e38: each step's loss is finite, their epoch mean is not (float32)."""
    out = tmp_path / "run"
    run = [*QUICK, "--beta", "1e38", "--data-dir", str(data_dir), "--out", str(out)]
    assert main.main(run) == 1
    message = error_line(capsys)
    assert "became inf at epoch 1" in message and "Try a smaller --beta (now 1e+38)" in message
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()


def test_metrics_jsonl_refuses_non_finite_numbers(tmp_path):
    with pytest.raises(ValueError):
        checkpoint.append_metrics(tmp_path / "metrics.jsonl", {"epoch": 1, "x": float("inf")})
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing written


def test_a_corrupt_gz_is_one_line_and_leaves_nothing_that_blocks_the_next_try(tmp_path, capsys):
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_mnist(raw, gz=True)
    good = (raw / "train-images-idx3-ubyte.gz").read_bytes()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(good[:40] + b"\xff" * 64 + good[104:])
    run = [*QUICK, "--epochs", "1", "--data-dir", str(tmp_path / "data")]
    assert main.main([*run, "--out", str(tmp_path / "a")]) == 1
    message = error_line(capsys)
    assert f"{raw / 'train-images-idx3-ubyte.gz'} cannot be unpacked" in message
    left = [p.name for p in raw.iterdir() if p.name.startswith("train-images")]
    assert left == ["train-images-idx3-ubyte.gz"]  # no empty or partial file beside it
    (raw / "train-images-idx3-ubyte.gz").write_bytes(good)  # the good copy back
    assert main.main([*run, "--out", str(tmp_path / "b")]) == 0


def test_paths_with_spaces_give_commands_that_work_pasted_into_a_shell(
    data_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "my run ü 日本"
    real = main.train_epoch

    def train_epoch(*args, **kwargs):
        if args[3].epoch == 2:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(main, "train_epoch", train_epoch)
    assert (
        main.main([*QUICK, "--epochs", "3", "--data-dir", str(data_dir), "--out", str(out)]) == 130
    )
    monkeypatch.undo()
    command = capsys.readouterr().out.split("Resume with: ")[1].splitlines()[0]
    assert shlex.quote(str(out / "checkpoint.pt")) in command
    pasted = subprocess.run(["bash", "-c", f"{command} --epochs 2"], capture_output=True, text=True)
    assert pasted.returncode == 0, pasted.stderr
    assert [row["epoch"] for row in metrics(out)] == [1, 2]


def test_ctrl_c_in_the_final_estimate_prints_a_command_that_works(
    data_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    monkeypatch.setattr(
        likelihood, "log_likelihood", lambda *args: signal.raise_signal(signal.SIGINT)
    )
    run = [*QUICK, "--epochs", "1", "--eval-k", "5", "--data-dir", str(data_dir), "--out", str(out)]
    assert main.main(run) == 130
    monkeypatch.undo()
    printed = capsys.readouterr().out
    assert (
        "holds epoch 1, the last; estimate log p(x) with: " in printed and "--resume" not in printed
    )
    command = shlex.split(printed.split("estimate log p(x) with: ")[1].splitlines()[0])
    pasted = subprocess.run(command, capture_output=True, text=True)
    assert pasted.returncode == 0, pasted.stderr
    assert metrics(out)[-1]["k"] == 5


def test_odd_bytes_and_lines_in_metrics_jsonl_do_not_stop_a_resume(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main.main([*QUICK, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'\xff\xfe{"epoch": 1}\n{"evaluation": "importance-weighted", "epoch": null}\n')
        f.write(b'{"evaluation": "importance-weighted", "epoch": 1, "nll": NaN}\n')
    assert main.main(["--resume", str(out / "checkpoint.pt"), "--epochs", "2"]) == 0
    assert [row["epoch"] for row in metrics(out)] == [1, 2]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"epoch": "x"}, "epoch 'x' is not a count of epochs"),
        ({"args": []}, "args is a list, not a dict"),
        ({"history": {}}, "history is not a row for each"),
        ({"args_latent_dim": "ten"}, "its flag latent_dim is 'ten', not a int"),
    ],
)
def test_a_checkpoint_with_the_keys_but_wrong_types_is_one_line(
    trained_run, tmp_path, capsys, change, words
):
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    for key, value in change.items():
        if key.startswith("args_"):
            state["args"][key[5:]] = value
        else:
            state[key] = value
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    for mode in (["--resume", str(path), "--epochs", "5"], ["--evaluate", str(path)]):
        message = exits_with_usage_error(mode, capsys)
        assert "is not a checkpoint written by main.py" in message and words in message


def fail_tmp_writes(monkeypatch) -> None:
    """Writes of a temporary file (args.json's, metrics.jsonl's) fail half done: a full disk."""
    write_text = Path.write_text

    def write(self, text, *args, **kwargs):
        if self.name.endswith(".tmp"):
            write_text(self, text[: len(text) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write)


def test_a_full_disk_at_the_start_names_the_file_and_keeps_what_was_saved(
    data_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert main.main([*QUICK, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    fail_tmp_writes(monkeypatch)
    assert main.main(["--resume", str(out / "checkpoint.pt"), "--epochs", "2"]) == 1
    message = error_line(capsys)
    assert f"writing {out / 'metrics.jsonl'} failed (No space left on device)" in message
    assert f"{out / 'checkpoint.pt'} of epoch 1 is intact" in message and "--resume" in message
    assert (out / "metrics.jsonl").read_bytes() == before
    assert not (out / "metrics.jsonl.tmp").exists()
    new = tmp_path / "new"
    assert main.main([*QUICK, "--data-dir", str(data_dir), "--out", str(new)]) == 1
    assert f"writing {new / 'args.json'} failed" in error_line(capsys)
    assert not (new / "args.json").exists() and not (new / "args.json.tmp").exists()


def test_a_relative_data_dir_is_found_when_resumed_from_elsewhere(data_dir, tmp_path, monkeypatch):
    shutil.copytree(data_dir, tmp_path / "here" / "d")
    monkeypatch.chdir(tmp_path / "here")
    assert main.main([*QUICK, "--epochs", "1", "--data-dir", "d", "--out", "run"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    checkpoint = tmp_path / "here" / "run" / "checkpoint.pt"
    assert main.main(["--resume", str(checkpoint), "--epochs", "2"]) == 0
    assert torch.load(checkpoint, weights_only=True)["args"]["data_dir"] == str(
        tmp_path / "here" / "d"
    )
    assert not (tmp_path / "elsewhere" / "data").exists()  # no download tried here


def test_a_failing_visdom_log_without_a_server_is_one_line_naming_it(
    data_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(flags, "cannot_append", lambda path: None)  # it fails only later
    log = tmp_path / "gone" / "visdom.log"
    run = [*QUICK, "--visdom-log", str(log), "--data-dir", str(data_dir)]
    assert main.main([*run, "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"writing the Visdom log {log} failed") == 1
    assert "None" not in printed and "stopped answering" not in printed
