"""Where a run's wall time goes: `main.py` as a user types it, timed from outside.

    python benchmarks/wall_time.py --data-dir DIR             # DIR holds MNIST/raw; ~3 minutes
    python benchmarks/wall_time.py --data-dir DIR --flags="--device cuda"   # where a GPU is

Runs main.py (the defaults, or --flags) in a subprocess, without and with a Visdom server on
127.0.0.1, --rounds times each, and splits each run's wall time (launch to exit) by the
timestamps of the lines it prints and by its metrics.jsonl:

- training steps: Σ epoch_seconds; the per-epoch test pass: Σ eval_seconds;
- start-up: launch to the run's first line (interpreter, imports, data, model, the viewer);
- between epochs: what the training thread spends after each test pass (the copy for the writer,
  the pictures' grids, printing); the writes themselves run on another thread meanwhile;
- last write: the last epoch's line to the `done:` line (its checkpoint, the PNG files);
- exit: the `done:` line to the end of the process (the interpreter's exit);
- everything but the steps and the test pass, as a share of the wall time.

It also prints the loop's images per second (the median epoch) and the time to quality: wall
seconds from launch to the first epoch line whose test loss is at most --target (36.1, the
tutorial's 50-epoch figure). Measure on an otherwise idle machine.
"""

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers.checkpoint import read_metrics

EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+: train [\d.]+, test ([\d.]+)")
PARTS = ("steps", "test pass", "start-up", "between epochs", "last write", "exit")


def visdom_server(folder: Path, port: int) -> subprocess.Popen:
    """A Visdom server on 127.0.0.1:port, answering before this returns (60 s at most)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "visdom.server", "-port", str(port), "-bind_local"]
        + ["-env_path", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            opener.open(f"http://127.0.0.1:{port}", timeout=2)
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("error: the Visdom server did not answer within 60 s")


def start_main(argv: list[str], **popen) -> subprocess.Popen:
    """main.py with `argv` in a process of its own, as a user types it; its stdout a pipe whose
    lines come as they are printed (unbuffered: a piped stdout would come in blocks)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *argv],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **popen,
    )


def timed_run(argv: list[str], target: float) -> dict:
    """Run main.py with `argv`; the wall time, its parts and the time to quality."""
    start = time.perf_counter()
    process = start_main(argv, stderr=subprocess.DEVNULL)
    first = last = done = quality = None
    for line in process.stdout:
        now = time.perf_counter() - start
        first = first if first is not None else now
        done = now if line.startswith("done: ") else done
        match = EPOCH_LINE.match(line)
        if match:
            last = now
            if quality is None and float(match.group(2)) <= target:
                quality = now
    if process.wait() != 0:
        raise SystemExit(f"error: main.py {shlex.join(argv)} exited with {process.returncode}")
    wall = time.perf_counter() - start
    rows = read_metrics(Path(argv[argv.index("--out") + 1]) / "metrics.jsonl")
    steps = sum(row["epoch_seconds"] for row in rows)
    test_pass = sum(row["eval_seconds"] for row in rows)
    return {
        "wall": wall,
        "steps": steps,
        "test pass": test_pass,
        "start-up": first,
        "between epochs": last - first - steps - test_pass,
        "last write": done - last,
        "exit": wall - done,
        "images/s": statistics.median(row["train_images_per_second"] for row in rows),
        "quality": quality,
        "threads": sorted({row["threads"] for row in rows}, key=str),
    }


def report(name: str, runs: list[dict], target: float) -> None:
    """One block per condition: the median of each part, and its share of the wall time."""
    wall = statistics.median(run["wall"] for run in runs)
    walls = [round(run["wall"], 1) for run in runs]
    print(f"{name}: wall time {wall:.1f} s (median of {len(runs)}: {walls})")
    for part in PARTS:
        seconds = statistics.median(run[part] for run in runs)
        print(f"  {part:<15} {seconds:6.2f} s  {seconds / wall:5.1%}")
    other = statistics.median(
        (run["wall"] - run["steps"] - run["test pass"]) / run["wall"] for run in runs
    )
    speed = statistics.median(run["images/s"] for run in runs)
    print(f"  everything but the steps and the test pass: {other:.1%} of the wall time")
    print(f"  training loop: {speed:,.0f} images/s (median epoch); threads {runs[0]['threads']}")
    reached = [run["quality"] for run in runs if run["quality"] is not None]
    quality = (
        f"{statistics.median(reached):.1f} s from launch (median; {[round(q, 1) for q in reached]})"
        if reached
        else "not reached"
    )
    print(f"  time to quality (test loss ≤ {target}): {quality}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--flags", default="", help="main.py flags (default: none, the defaults)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per condition (default: 3)")
    parser.add_argument("--target", type=float, default=36.1, help="test loss for time to quality")
    parser.add_argument("--port", type=int, default=8123, help="the Visdom server's port")
    parser.add_argument(
        "--closed-port", type=int, default=8124, help="a port where no server listens"
    )
    options = parser.parse_args()
    flags = [*shlex.split(options.flags), "--data-dir", options.data_dir]
    visdom = {  # no server: main.py finds none at its port, as when a user has not started one
        "no server": [
            "--visdom-server",
            "http://127.0.0.1",
            "--visdom-port",
            str(options.closed_port),
        ],
        "with a Visdom server": [
            "--visdom-server",
            "http://127.0.0.1",
            "--visdom-port",
            str(options.port),
        ],
    }
    results = {"no server": [], "with a Visdom server": []}
    # untimed: read torch's libraries into the page cache, which an idle machine may have emptied,
    # so that the first round starts as warm as the others
    subprocess.run([sys.executable, "-c", "import torch, torchvision, visdom"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = visdom_server(Path(tmp), options.port)
        try:
            for round_ in range(options.rounds):  # the conditions in turn, so a drift hits both
                for name in results:
                    out = ["--out", str(Path(tmp) / f"{name}-{round_}".replace(" ", "-"))]
                    results[name].append(timed_run([*flags, *visdom[name], *out], options.target))
        finally:
            server.kill()
            server.wait()
    print(f"main.py {options.flags or '(the defaults)'}; {os.cpu_count()} CPUs")
    for name, runs in results.items():
        report(name, runs, options.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
