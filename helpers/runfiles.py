"""A run's folder: the model built or restored from its checkpoint, and each epoch saved into it.

<out>/checkpoint.pt   model, Adam, epoch, flags, RNG states, metrics so far (atomic)
<out>/metrics.jsonl   a line per epoch, and one per log-likelihood estimate
<out>/args.json       the run's flags
<out>/*.png           the last epoch's pictures (viewer.py)
<out>/run.lock        while a process writes the folder: its PID (run_lock.py)
"""

import datetime
import json
import math
import shlex
import threading
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch

from helpers import flags
from helpers.checkpoint import (
    CheckpointError,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_atomically,
    write_metrics,
)
from helpers.ctrl_c import ctrl_c_held
from helpers.run_lock import FolderInUse, RunLock
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


class WriteError(Exception):
    """A file of the run folder could not be written (a full disk, say); the message says which."""


def writing(function: Callable, *args):
    """function(*args), an OSError it raises (a full disk, say) raised as a WriteError."""
    try:
        return function(*args)
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        raise WriteError(f"writing{where} failed ({error.strerror or error})") from None


def on_cpu(state):
    """A copy of a state dict (nested dicts and lists of tensors) with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: on_cpu(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(on_cpu(value) for value in state)
    return state


class Writer:
    """Runs one job at a time on a thread of its own: submit() waits for the job before, so the
    writes stay in order and at most one is in flight. A job's exception is raised in the main
    thread, by the next submit() or wait()."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self.thread = threading.Thread(target=self.run, args=(job,), name="run-folder writer")
        self.thread.start()

    def run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as error:  # raised again in the main thread
            self.error = error

    def busy(self) -> bool:
        """Whether a job is running now."""
        return self.thread is not None and self.thread.is_alive()

    def wait(self) -> None:
        """Wait for the job in flight, with Ctrl-C held off meanwhile; raise its error, if any."""
        thread, self.thread = self.thread, None
        if thread is not None:
            with ctrl_c_held():  # a Ctrl-C meanwhile is raised after the join; the error stays
                thread.join()
        error, self.error = self.error, None
        if error is not None:
            raise error


def args_text(flags: dict) -> str:
    """args.json: the flags of the run the checkpoint holds (of a new run, until it has one)."""
    return json.dumps(flags, indent=2) + "\n"


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


def trained_model(args: Namespace, checkpoint: dict, device: torch.device) -> VAE:
    """The checkpoint's model built from `args` and loaded (no optimizer), in eval mode."""
    model = build_model(args, device)
    restore(model, None, checkpoint, args)
    return model.eval()


class RunFolder:
    """The folder of one run and what it holds: `history`, a row per saved epoch, and the span of
    the lr schedule (schedules.py)."""

    def __init__(self, out: Path, created: bool, lock: RunLock) -> None:
        self.out, self.created, self.lock = out, created, lock
        self.history: list[dict] = []  # a row per epoch trained, written or being written
        self.saved_epochs = 0  # the epoch checkpoint.pt holds, once written
        self.span: dict = {}
        self.writer = Writer()
        self.metrics = out / "metrics.jsonl"

    @classmethod
    def prepare(cls, args: Namespace, source: str | None) -> "RunFolder":
        """Pick --out (default: a new runs/<timestamp>, or the checkpoint's folder), test-write
        it and lock it (run_lock.py); a bad one, or one another run holds, fails as a bad flag
        does."""
        if args.out is None:
            args.out = (
                str(Path(source).parent)
                if source
                else f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}"
            )
        out = Path(args.out)
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / ".write-test").write_text("")
            (out / ".write-test").unlink()
            lock = RunLock.take(out)
        except FolderInUse as error:
            flags.fail(str(error))
        except OSError as error:
            flags.fail(f"--out {out} cannot be written ({error.strerror}): choose another folder")
        folder = cls(out, created, lock)
        if not source and (out / "checkpoint.pt").exists():
            folder.lock.release()
            flags.fail(
                f"{out} already holds a run: continue it with "
                f"--resume {shlex.quote(str(out / 'checkpoint.pt'))}, or choose another --out"
            )
        return folder

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
            self.saved_epochs = checkpoint["epoch"]  # on disk already: a failure below keeps it
            writing(write_metrics, self.metrics, checkpoint["history"], checkpoint["epoch"])
            self.history, self.span = checkpoint["history"], checkpoint["lr_schedule"]
        else:  # a resumed run's args.json changes with its first checkpoint (save_epoch)
            self.span = {"start": 0, "end": args.epochs}
            writing(write_atomically, self.out / "args.json", args_text(vars(args)))

    def save_epoch(
        self,
        model: VAE,
        optimizer: torch.optim.Adam,
        args: Namespace,
        row: dict,
        device: torch.device,
        then: Callable[[list[dict]], None] | None = None,
    ) -> None:
        """Add the epoch to the history; write its checkpoint and metrics line (both, or neither),
        then call then(history) (the pictures), on the writer's thread while the next epoch
        trains.

        What is written is a copy taken now, on the CPU; the write before it finishes first, and
        its error, if any, is raised here (a WriteError).
        """
        weights = list(model.parameters())
        if not torch.stack([torch.isfinite(w).all() for w in weights]).all():  # one host sync
            raise NonFiniteLoss(f"the weights became non-finite in epoch {row['epoch']}")
        for key, value in row.items():  # metrics.jsonl is strict JSON: no NaN, no Infinity
            if isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteLoss(f"the {key} became {value} at epoch {row['epoch']}")
        self.history.append(row)
        state = {
            "model": on_cpu(model.state_dict()),
            "optimizer": on_cpu(optimizer.state_dict()),
            "epoch": row["epoch"],
            "args": dict(vars(args)),
            "rng": rng_state(device),
            "history": list(self.history),
            "lr_schedule": dict(self.span),
        }

        def write() -> None:
            writing(save_checkpoint, self.out / "checkpoint.pt", state, self.metrics, row)
            self.saved_epochs = row["epoch"]
            writing(write_atomically, self.out / "args.json", args_text(state["args"]))
            if then is not None:
                writing(then, state["history"])

        self.writer.submit(write)

    def finish(self) -> None:
        """Wait for the write in flight (holding Ctrl-C off meanwhile); raise its error."""
        self.writer.wait()

    def remove_if_empty(self) -> None:
        """A run that failed before writing anything leaves no folder it created behind."""
        if self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()
