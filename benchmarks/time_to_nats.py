"""Time to nats: the minutes of training a recipe needs to reach the papers' −log p(x) on MNIST.

    python benchmarks/time_to_nats.py --list
    python benchmarks/time_to_nats.py --recipe quick --seed 0 --data-dir DIR --out runs/quick
    python benchmarks/time_to_nats.py --recipe quick --seeds 0,1,2 --data-dir DIR --out runs/quick

The protocol is the papers' (Burda et al. 2015): dynamically binarized MNIST, Bernoulli pixels,
one stochastic layer with a N(0, I) prior and a diagonal Gaussian posterior; a recipe picks the
rest (widths, objective, optimizer, schedule). The marks: 86.76 nats (Burda et al.'s VAE), 85.54
(their IWAE, k=5) and 84.78 (IWAE, k=50).

Each seed is main.py with the recipe's flags, run as a user runs it (a process of its own), into
the run folder --out (with --seeds, one folder per seed: --out/seed-S): a checkpoint and
metrics.jsonl as any run, and time_to_nats.json, the wall clock of each epoch's line from the
launch. Along the way main.py watches −log p(x) cheaply (k=100 on the first 1,000 test images,
--watch-every); at the end it estimates it with k=5000 on all 10,000 test images, in float32.

A mark is reached when that final estimate is at most the mark. The minutes to it are those of
the first watched epoch whose estimate, shifted by the final gap (final k=5000 − last watched;
the first 1,000 images are easier than the rest), is at most the mark: the wall clock from the
launch to that epoch's line. Measure with nothing else running on the machine.
"""

import argparse
import json
import math
import os
import shlex
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from wall_time import start_main

from helpers.checkpoint import read_metrics

MARKS = {86.76: "Burda et al.'s VAE", 85.54: "IWAE k=5", 84.78: "IWAE k=50"}
PROTOCOL = "--likelihood bernoulli --binarize dynamic --no-visdom --watch-k 100 --watch-images 1000"
FINAL_K = 5000
RECORD = "time_to_nats.json"


@dataclass(frozen=True)
class Recipe:
    purpose: str
    flags: str  # main.py's flags besides the protocol's; --epochs a multiple of --watch-every


RECIPES = {
    "quick": Recipe(
        "aims at 86.76 (Burda et al.'s VAE, 3280 epochs) within 15 minutes on 2 CPU cores: "
        "784-500-500-100 trained on the IWAE bound with k=2 and DReG gradients, a cosine lr over "
        "240 epochs, bf16 where the hardware has it (docs/results.md: how often it gets there)",
        "--hidden 500,500 --latent-dim 100 --activation relu --decoder-activation leaky_relu "
        "--batch-size 250 --lr 1e-3 --adam-eps 1e-4 --clip-grad 5 --objective iwae --train-k 2 "
        "--dreg --lr-schedule cosine --lr-floor 0.1 --epochs 240 --watch-every 10",
    ),
    "hour": Recipe(
        "aims at 84.78 (Burda et al.'s IWAE, k=50, 3280 epochs) within 60 minutes on 2 CPU cores: "
        "quick's net and optimizer on the IWAE bound with k=5 and DReG gradients, a cosine lr over "
        "560 epochs (docs/results.md: how far it gets)",
        "--hidden 500,500 --latent-dim 100 --activation relu --decoder-activation leaky_relu "
        "--batch-size 250 --lr 1e-3 --adam-eps 1e-4 --clip-grad 5 --objective iwae --train-k 5 "
        "--dreg --lr-schedule cosine --lr-floor 0.1 --epochs 560 --watch-every 10",
    ),
    "quick-elbo": Recipe(
        "the first quick recipe, kept for its table in docs/results.md: the ELBO with sticking "
        "the landing over 360 epochs (seed 0 reached 86.76 after 12.5 minutes, seeds 1 and 2 not)",
        "--hidden 500,500 --latent-dim 100 --activation relu --decoder-activation leaky_relu "
        "--batch-size 250 --lr 1e-3 --adam-eps 1e-4 --clip-grad 5 --stl --lr-schedule cosine "
        "--lr-floor 0.1 --epochs 360 --watch-every 10",
    ),
}


def main_flags(
    recipe: Recipe, seed: int, out: Path, options: argparse.Namespace, more: str = ""
) -> list[str]:
    """main.py's command line for one run: the protocol, the recipe, `more`, then --flags (which
    win)."""
    flags = f"{PROTOCOL} {recipe.flags} {more} --seed {seed} --device {options.device}"
    flags += f" --data-dir {shlex.quote(options.data_dir)} --out {shlex.quote(str(out))}"
    return shlex.split(f"{flags} {options.flags}")


def launch(argv: list[str], out: Path) -> tuple[dict[int, float], float]:
    """Run main.py with `argv` in a process of its own, passing its output through: the wall
    seconds from the launch to each epoch's line, and to its end. A run that fails ends this."""
    start = time.perf_counter()
    epoch_wall = {}
    with start_main(argv) as process:
        print(f"$ {shlex.join(process.args)}", flush=True)  # the command start_main launched
        try:
            for line in process.stdout:
                if line.startswith("epoch "):  # "epoch 12/360: train ..."
                    epoch_wall[int(line.split("/")[0].split()[1])] = time.perf_counter() - start
                print(line, end="", flush=True)
            status = process.wait()
        except KeyboardInterrupt:  # main.py got the Ctrl-C too: it keeps its last epoch
            status = process.wait()
    if status:
        stop = f"stopped by {signal.Signals(-status).name}" if status < 0 else f"exit {status}"
        sys.exit(
            f"error: the run in {out} ended early ({stop}); a timed run cannot be resumed: "
            f"remove {out} (or choose another --out) and run it again"
        )
    return epoch_wall, time.perf_counter() - start


def run_seed(recipe_name: str, seed: int, out: Path, options: argparse.Namespace) -> dict:
    """Train one seed and estimate its −log p(x) with k=5000; its record, also written to
    out/time_to_nats.json: the wall seconds from the launch to each epoch's line and to the end."""
    argv = main_flags(RECIPES[recipe_name], seed, out, options, f"--eval-k {FINAL_K}")
    epoch_wall, wall = launch(argv, out)
    record = {
        "recipe": recipe_name,
        "seed": seed,
        "command": shlex.join(["python", "main.py", *argv]),
        "epoch_wall_seconds": epoch_wall,
        "wall_seconds": wall,
    }
    (out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def compare_amp(recipe_name: str, epochs: int, options: argparse.Namespace) -> str:
    """The recipe's first `epochs` epochs (its schedule shortened to them) with bf16 on and off,
    in the order on, off, off, on: a Markdown table of each setting's median epoch (training
    steps only, the first epoch left out), test −ELBO and watched −log p(x) at the end."""
    rows = {"on": [], "off": []}
    for turn, amp in enumerate(("on", "off", "off", "on")):
        out = Path(options.out) / f"amp-{amp}-{turn}"
        more = f"--epochs {epochs} --watch-every {epochs} --amp {amp}"
        launch(main_flags(RECIPES[recipe_name], options.seed, out, options, more), out)
        metrics = [row for row in read_metrics(out / "metrics.jsonl") if "epoch_seconds" in row]
        seconds = statistics.median(row["epoch_seconds"] for row in metrics[1:])
        rows[amp].append((seconds, metrics[-1]["test_loss"], metrics[-1]["watch_nll"]))
    lines = [
        f"| recipe, {epochs} epochs (and --flags) | bf16 | median epoch s (each run) | "
        "test −ELBO | watched −log p(x) (k=100, 1,000 images) |",
        "|---|---|---|---|---|",
    ]
    name = f"{recipe_name} {options.flags}".strip()
    for amp, runs in rows.items():
        seconds, elbo, watched = (
            ", ".join(f"{value:.2f}" for value in column) for column in zip(*runs)
        )
        lines.append(f"| {name} | {amp} | {seconds} | {elbo} | {watched} |")
    return "\n".join(lines)


def result(out: Path, record: dict) -> dict:
    """The seed's figures from its run folder: the final estimate and the minutes to each mark."""
    rows = read_metrics(out / "metrics.jsonl")
    final = [row for row in rows if row.get("evaluation")][-1]
    epochs = [row for row in rows if "epoch_seconds" in row]
    watched = [row for row in epochs if "watch_nll" in row]
    gap = final["test_nll"] - watched[-1]["watch_nll"] if watched else math.nan
    wall = {int(epoch): seconds for epoch, seconds in record["epoch_wall_seconds"].items()}
    minutes = {}
    for mark in MARKS:
        first = next((row for row in watched if row["watch_nll"] + gap <= mark), None)
        if final["test_nll"] <= mark and first is not None:
            minutes[mark] = wall[first["epoch"]] / 60
    return {
        "seed": record["seed"],
        "minutes": minutes,
        "k": final["k"],
        "nll": final["test_nll"],
        "error": final["test_nll_standard_error"],
        "training_minutes": epochs[-1]["elapsed_seconds"] / 60,
        "start_seconds": wall[epochs[0]["epoch"]] - epochs[0]["elapsed_seconds"],
        "eval_minutes": final["eval_seconds"] / 60,
        "wall_minutes": record["wall_seconds"] / 60,
    }


def table(recipe_name: str, results: list[dict]) -> str:
    """The Markdown table of the seeds: minutes to each mark, the final estimate, the times."""
    marks = " | ".join(f"min to {mark} ({name})" for mark, name in MARKS.items())
    lines = [
        f"| recipe | seed | {marks} | final −log p(x) (± s.e.) | training min "
        f"(elapsed_seconds) | start-up s | final estimate min | wall min |",
        "|---" * (7 + len(MARKS)) + "|",
    ]
    for r in results:
        reached = " | ".join(
            f"{r['minutes'][mark]:.1f}" if mark in r["minutes"] else "—" for mark in MARKS
        )
        lines.append(
            f"| {recipe_name} | {r['seed']} | {reached} | {r['nll']:.2f} ± {r['error']:.2f} "
            f"(k={r['k']}) | "
            f"{r['training_minutes']:.1f} | {r['start_seconds']:.0f} | {r['eval_minutes']:.1f} | "
            f"{r['wall_minutes']:.1f} |"
        )
    first_mark = next(iter(MARKS))
    if len(results) > 1 and all(first_mark in r["minutes"] for r in results):
        slowest = max(r["minutes"][first_mark] for r in results)
        lines.append(f"\nevery seed reached {first_mark} within {slowest:.1f} min")
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="name the recipes and what each is for")
    p.add_argument("--recipe", choices=RECIPES, default="quick", help="(default: %(default)s)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="one seed (default: %(default)s)")
    seeds.add_argument("--seeds", help="several, in turn, e.g. 0,1,2: a table of them")
    p.add_argument("--data-dir", default="./data", help="holds MNIST/raw (default: %(default)s)")
    p.add_argument("--out", help="the run folder; with --seeds, the folder of one per seed")
    p.add_argument("--device", default="auto", help="main.py's --device (default: %(default)s)")
    p.add_argument(
        "--compare-amp",
        type=int,
        metavar="EPOCHS",
        help="instead: the recipe's first EPOCHS epochs with bf16 on and off, twice each, "
        "into --out/amp-on-0 ... (epoch time and quality, side by side)",
    )
    p.add_argument(
        "--flags",
        default="",
        help='more main.py flags, after the recipe\'s: e.g. --flags="--no-amp" (default: none)',
    )
    options = p.parse_args(argv)
    if options.compare_amp is not None and options.compare_amp < 2:
        p.error("--compare-amp: give at least 2 epochs (the first one is left out of the median)")
    if not options.list and not options.out:
        p.error("--out DIR is needed: the run folder (the folder of the seeds' with --seeds)")
    try:
        options.seed_list = [int(s) for s in options.seeds.split(",")] if options.seeds else None
    except ValueError:
        p.error(f"--seeds {options.seeds!r}: give seeds as integers with commas, e.g. 0,1,2")
    return options


def main(argv: list[str]) -> int:
    options = parse(argv)
    if options.list:
        for name, recipe in RECIPES.items():
            print(f"{name}: {recipe.purpose}\n  main.py {PROTOCOL} {recipe.flags}")
        return 0
    if options.compare_amp:
        print(f"\n{compare_amp(options.recipe, options.compare_amp, options)}")
        print(f"(CPU: {cpu_name()}, {os.cpu_count()} cores; device {options.device})")
        return 0
    seeds = options.seed_list or [options.seed]
    results = []
    for seed in seeds:
        out = Path(options.out) / f"seed-{seed}" if options.seed_list else Path(options.out)
        if (out / RECORD).exists():  # timed before: reported as it was
            print(f"seed {seed}: timed before, in {out}")
            record = json.loads((out / RECORD).read_text())
            if record["recipe"] != options.recipe:
                sys.exit(
                    f"error: {out} holds a run of recipe {record['recipe']}, not "
                    f"{options.recipe}: choose another --out"
                )
        elif (out / "checkpoint.pt").exists():
            sys.exit(
                f"error: {out} holds a run this benchmark did not finish; a timed run cannot "
                f"be resumed: remove it or choose another --out"
            )
        else:
            record = run_seed(options.recipe, seed, out, options)
        results.append(result(out, record))
    print(f"\n{table(options.recipe, results)}")
    print(f"(CPU: {cpu_name()}, {os.cpu_count()} cores; device {options.device})")
    return 0


def cpu_name() -> str:
    """The CPU's model name, as lscpu and /proc/cpuinfo give it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
