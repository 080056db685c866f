"""A run's folder: the model built or restored from its checkpoint, and each epoch saved into it.

<out>/checkpoint.pt   model, Adam, epoch, flags, RNG states, metrics so far (atomic)
<out>/metrics.jsonl   a line per epoch, and one per log-likelihood estimate
<out>/args.json       the run's flags
<out>/*.png           the last epoch's pictures (viewer.py)
"""

import datetime
import json
from argparse import Namespace
from pathlib import Path

import torch

from helpers import flags
from helpers.checkpoint import (
    CheckpointError,
    append_metrics,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_metrics,
)
from helpers.ctrl_c import ctrl_c_held
from helpers.schedules import set_lr
from vae import VAE

# Keys of metrics.jsonl that depend on the machine and its load, not on the seed.
TIMING_KEYS = (
    "epoch_seconds",
    "eval_seconds",
    "elapsed_seconds",
    "train_images_per_second",
    "threads",
)


class NonFiniteLoss(Exception):
    """The loss or the weights stopped being finite numbers: the run cannot go on."""


def build_model(args: Namespace, device: torch.device) -> VAE:
    sizes = (784, tuple(args.hidden), args.latent_dim)
    return VAE(*sizes, args.activation, args.decoder_activation).to(device)


def build_optimizer(model: VAE, args: Namespace) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=args.lr, eps=args.adam_eps, fused=True)


def restore(
    model: VAE, optimizer: torch.optim.Adam | None, checkpoint: dict, args: Namespace
) -> None:
    """Load the checkpoint's weights (and optimizer state), or a CheckpointError saying why not."""
    try:
        model.load_state_dict(checkpoint["model"])
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            set_lr(optimizer, args.lr)
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"the checkpoint does not fit this model ({str(error).splitlines()[0]}): "
            "start a new run or give the flags it was made with"
        ) from None


class RunFolder:
    """The folder of one run and what it holds: `history`, a row per saved epoch, and the span of
    the lr schedule (schedules.py)."""

    def __init__(self, out: Path, created: bool) -> None:
        self.out, self.created = out, created
        self.history: list[dict] = []
        self.span: dict = {}

    @classmethod
    def prepare(cls, args: Namespace, source: str | None) -> "RunFolder":
        """Pick --out (default: a new runs/<timestamp>, or the checkpoint's folder) and
        test-write it; a bad one fails as a bad flag does."""
        if args.out is None:
            args.out = (
                str(Path(source).parent)
                if source
                else f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}"
            )
        out = Path(args.out)
        if not source and (out / "checkpoint.pt").exists():
            flags.fail(
                f"{out} already holds a run: continue it with --resume {out / 'checkpoint.pt'}, "
                "or choose another --out"
            )
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / ".write-test").write_text("")
            (out / ".write-test").unlink()
        except OSError as error:
            flags.fail(f"--out {out} cannot be written ({error.strerror}): choose another folder")
        return cls(out, created)

    def start(
        self,
        args: Namespace,
        checkpoint: dict | None,
        model: VAE,
        optimizer: torch.optim.Adam,
        device: torch.device,
    ) -> None:
        """Continue the checkpoint (weights, Adam, RNG, metrics.jsonl cut back to its epoch), or
        start anew; write args.json."""
        if checkpoint:
            restore(model, optimizer, checkpoint, args)
            set_rng_state(checkpoint["rng"], device)
            write_metrics(self.out / "metrics.jsonl", checkpoint["history"], checkpoint["epoch"])
            self.history, self.span = checkpoint["history"], checkpoint["lr_schedule"]
        else:
            self.span = {"start": 0, "end": args.epochs}
        (self.out / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")

    def save_epoch(
        self,
        model: VAE,
        optimizer: torch.optim.Adam,
        args: Namespace,
        row: dict,
        device: torch.device,
    ) -> None:
        """Add the epoch to the history and write the checkpoint and its metrics line: both, or
        neither (a Ctrl-C waits for them)."""
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise NonFiniteLoss(f"the weights became non-finite in epoch {row['epoch']}")
        with ctrl_c_held():
            self.history.append(row)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": row["epoch"],
                "args": vars(args),
                "rng": rng_state(device),
                "history": self.history,
                "lr_schedule": self.span,
            }
            save_checkpoint(self.out / "checkpoint.pt", state)
            append_metrics(self.out / "metrics.jsonl", row)

    def remove_if_empty(self) -> None:
        """A run that failed before writing anything leaves no folder it created behind."""
        if self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()
