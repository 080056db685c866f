"""Plot test −log p(x) against wall-clock minutes of training, from runs' metrics.jsonl files.

    .venv/bin/python tools/plot_watch.py runs/goal1 [runs/other ...] --out nll_vs_minutes.png

The line is the run's watched estimate (--watch-every, small k, a test subset); a marker is each
importance-weighted evaluation of the whole test set (--eval-k), at the training time of its
epoch. It also prints, per run, the best watched and evaluated figures within --minutes budgets.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.checkpoint import read_metrics


def curves(run: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float, int]]]:
    """(minutes, watched −log p(x)) per watched epoch; (minutes, −log p(x), k) per evaluation."""
    rows = read_metrics(run / "metrics.jsonl")
    minutes = {row["epoch"]: row["elapsed_seconds"] / 60 for row in rows if "train_loss" in row}
    watched = [(minutes[row["epoch"]], row["watch_nll"]) for row in rows if "watch_nll" in row]
    evaluated = [
        (minutes[row["epoch"]], row["test_nll"], row["k"])
        for row in rows
        if row.get("evaluation") and row["epoch"] in minutes
    ]
    return watched, evaluated


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--out", default="nll_vs_minutes.png", help="the PNG to write")
    parser.add_argument(
        "--minutes",
        type=float,
        nargs="+",
        default=[30, 60],
        help="budgets for the printed bests (default: 30 60)",
    )
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for run in args.runs:
        watched, evaluated = curves(run)
        if watched:
            axes.plot(*zip(*watched, strict=True), label=f"{run.name} (watched)")
        for minute, nll, k in evaluated:
            axes.plot(minute, nll, "o", label=f"{run.name}, k={k}: {nll:.2f}")
        for budget in args.minutes:
            best = min((nll for minute, nll in watched if minute <= budget), default=None)
            final = [f"{nll:.2f} (k={k})" for minute, nll, k in evaluated if minute <= budget]
            print(
                f"{run}: within {budget:g} min, best watched {best and f'{best:.2f}'}; "
                f"evaluated {', '.join(final) or 'none'}"
            )
    axes.set(
        xlabel="training minutes (elapsed_seconds)",
        ylabel="test −log p(x), nats",
        title="test negative log-likelihood against training time",
    )
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
