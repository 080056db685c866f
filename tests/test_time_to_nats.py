"""benchmarks/time_to_nats.py: its runs on the tiny data, and how it finds the minutes to a mark."""

import json
import subprocess
import sys

import pytest

from conftest import DEVICES, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import time_to_nats

from helpers import flags

TINY = "--hidden 16,16 --latent-dim 4 --batch-size 100 --epochs 4 --watch-every 2 --watch-images 50"


def benchmark(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / "time_to_nats.py"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("device", DEVICES)
def test_seeds_run_in_turn_into_a_table_and_a_second_call_reports_them(device, data_dir, tmp_path):
    out = tmp_path / "nats"
    flags = f"--flags={TINY} --eval-k 20"
    first = benchmark(
        "--seeds",
        "0,1",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        flags,
        "--device",
        device,
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [line for line in first.stdout.splitlines() if line.startswith("| quick | ")]
    assert [row.split(" | ")[1] for row in rows] == ["0", "1"]
    for seed in (0, 1):
        record = json.loads((out / f"seed-{seed}" / "time_to_nats.json").read_text())
        assert sorted(map(int, record["epoch_wall_seconds"])) == [1, 2, 3, 4]
        assert record["command"].startswith("python main.py --likelihood bernoulli")
        assert f"--seed {seed} " in record["command"] and "--eval-k 20" in record["command"]
        assert json.loads((out / f"seed-{seed}" / "args.json").read_text())["device"] == device
    # the tiny model is far from every mark; its final estimate is k=20's
    assert all(row.count(" — ") == 3 and "(k=20)" in row for row in rows)

    again = benchmark("--seeds", "0,1", "--out", str(out), flags, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "$ " not in again.stdout  # no run launched: both reported as they were
    assert [line for line in again.stdout.splitlines() if line.startswith("| quick | ")] == rows


def test_an_unfinished_run_is_refused_not_resumed(data_dir, tmp_path):
    out = tmp_path / "nats"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    refused = benchmark("--out", str(out), "--data-dir", str(data_dir), cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "cannot be resumed: remove it or choose another --out" in refused.stderr


def test_bf16_on_and_off_side_by_side(data_dir, tmp_path):
    out = tmp_path / "amp"
    flags = f"--flags={TINY}"
    result = benchmark(
        "--compare-amp", "2", "--data-dir", str(data_dir), "--out", str(out), flags, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| quick")]
    assert [row[1] for row in rows] == ["on", "off"]
    assert all(len(row[2].split(", ")) == 2 for row in rows)  # two runs each, in turn
    args = [
        json.loads((out / name / "args.json").read_text()) for name in ("amp-on-0", "amp-off-1")
    ]
    assert [a["amp"] for a in args] == [True, False]


def write_run(out, watched: list[float], final: float) -> dict:
    """A run folder with epochs 10, 20, ... watched at `watched`, and its final estimate."""
    rows = [
        {
            "epoch": 10 * (i + 1),
            "epoch_seconds": 1.0,
            "elapsed_seconds": 60.0 * (i + 1),
            "watch_nll": nll,
        }
        for i, nll in enumerate(watched)
    ]
    rows.append(
        {
            "evaluation": "importance-weighted",
            "k": 5000,
            "test_nll": final,
            "test_nll_standard_error": 0.2,
            "eval_seconds": 600.0,
        }
    )
    out.mkdir()
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    wall = {str(row["epoch"]): row["elapsed_seconds"] + 6 for row in rows[:-1]}
    return {"seed": 0, "epoch_wall_seconds": wall, "wall_seconds": 60.0 * len(watched) + 620}


def test_a_mark_is_reached_when_the_final_estimate_confirms_it(tmp_path):
    # the watched figures (easier images) lie 0.5 below the final estimate: shifted by that gap,
    # 86.76 is first reached at epoch 40, whose line came 246 s after the launch
    record = write_run(tmp_path / "a", [90.0, 87.0, 86.4, 86.2, 86.0], final=86.5)
    result = time_to_nats.result(tmp_path / "a", record)
    assert result["minutes"] == {86.76: 246 / 60}
    assert (result["nll"], result["error"], result["start_seconds"]) == (86.5, 0.2, 6)
    # shifted, epoch 20 (86.4) is below 86.76, but the final estimate is not: no mark reached
    record = write_run(tmp_path / "b", [90.0, 85.5, 86.0], final=86.9)
    assert time_to_nats.result(tmp_path / "b", record)["minutes"] == {}


@pytest.mark.parametrize("name", time_to_nats.RECIPES)
def test_each_recipe_is_a_command_main_py_accepts_and_watches_at_its_last_epoch(name, tmp_path):
    options = time_to_nats.parse(["--recipe", name, "--data-dir", "DIR", "--out", "OUT"])
    argv = time_to_nats.main_flags(time_to_nats.RECIPES[name], 0, tmp_path, options)
    args = flags.parse(argv)
    flags.check(args)  # exits, as main.py does, on a combination that makes no sense
    assert (args.likelihood, args.binarize, args.no_visdom) == ("bernoulli", "dynamic", True)
    assert args.epochs % args.watch_every == 0  # the last epoch's watched figure gives the gap
