"""A run's folder, and each epoch saved into it by a writer thread while the next one trains.

<out>/checkpoint.pt   model, Adam, epoch, flags, RNG states, metrics so far (atomic)
<out>/metrics.jsonl   a line per epoch, and one per log-likelihood estimate
<out>/args.json       the run's flags
<out>/*.png           the last epoch's pictures (pictures.py)
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
from helpers.checkpoint import rng_state, save_checkpoint, write_atomically, write_metrics
from helpers.ctrl_c import ctrl_c_held
from helpers.run_lock import FolderInUse, RunLock
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


def disk_write(function: Callable, *args):
    """function(*args), a write to disk: an OSError it raises (a full disk, say) becomes a
    WriteError that names the file."""
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
    """Runs jobs on threads of their own, one after the other in the order submitted, while the
    main thread goes on; submit() waits only while `depth` jobs are already waiting or running.
    A job's exception is raised in the main thread by the next submit() or wait(); the jobs after
    a failed one are dropped."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self.threads: list[threading.Thread] = []  # the jobs not yet joined, oldest first
        self.error: BaseException | None = None  # a job's, until raised in the main thread
        self.failed = False  # a job failed: the jobs after it are dropped

    def submit(self, job: Callable[[], None]) -> None:
        while len(self.threads) >= self.depth:
            self._join_oldest()
        self._raise_error()
        before = self.threads[-1] if self.threads else None
        thread = threading.Thread(target=self.run, args=(job, before), name="run-folder writer")
        self.threads.append(thread)
        thread.start()

    def run(self, job: Callable[[], None], before: threading.Thread | None) -> None:
        if before is not None:
            before.join()
        if self.failed:
            return
        try:
            job()
        except BaseException as error:  # raised again in the main thread
            self.error, self.failed = error, True

    def busy(self) -> bool:
        """Whether a job is running now."""
        return any(thread.is_alive() for thread in self.threads)

    def wait(self) -> None:
        """Wait for every job submitted, with Ctrl-C held off meanwhile; raise an error, if any."""
        while self.threads:
            self._join_oldest()
        self._raise_error()

    def _join_oldest(self) -> None:
        thread = self.threads.pop(0)  # forgotten first: a Ctrl-C during the join leaves none
        with ctrl_c_held():  # a Ctrl-C meanwhile is raised after the join; the error stays
            thread.join()

    def _raise_error(self) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error


def args_text(flags: dict) -> str:
    """args.json: the flags of the run the checkpoint holds (of a new run, until it has one)."""
    return json.dumps(flags, indent=2) + "\n"


class RunFolder:
    """The folder of one run and what it holds: `history`, a row of metrics per saved epoch, and
    `lr_span`, the epochs the lr schedule runs over (schedules.py)."""

    def __init__(self, out: Path, created: bool, lock: RunLock, epochs: int) -> None:
        self.out, self.created, self.lock = out, created, lock
        self.history: list[dict] = []  # a row per epoch trained, written or being written
        self.saved_epochs = 0  # the epoch checkpoint.pt holds, once written
        self.lr_span = {"start": 0, "end": epochs}
        self.writer = Writer()
        self.metrics = out / "metrics.jsonl"

    @classmethod
    def prepare(cls, args: Namespace) -> "RunFolder":
        """Pick --out (default: a new runs/<timestamp>, or the folder of the checkpoint the mode
        flag names), test-write it and lock it (run_lock.py); a bad one, or one another run
        holds, fails as a bad flag does."""
        source = args.resume or args.evaluate or args.generate
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
        folder = cls(out, created, lock, args.epochs)
        if not source and (out / "checkpoint.pt").exists():
            folder.lock.release()
            flags.fail(
                f"{out} already holds a run: continue it with "
                f"--resume {shlex.quote(str(out / 'checkpoint.pt'))}, or choose another --out"
            )
        return folder

    def continue_from(self, checkpoint: dict) -> None:
        """Take over the checkpoint's epochs: its history and lr span; metrics.jsonl cut back to
        its epoch (a line written after it is of an epoch the resumed run trains again)."""
        self.saved_epochs = checkpoint["epoch"]  # on disk already: a failure below keeps it
        disk_write(write_metrics, self.metrics, checkpoint["history"], checkpoint["epoch"])
        self.history, self.lr_span = checkpoint["history"], checkpoint["lr_schedule"]

    def write_args(self, args: Namespace) -> None:
        """<out>/args.json: a new run's flags (a resumed run's follow its checkpoints)."""
        disk_write(write_atomically, self.out / "args.json", args_text(vars(args)))

    def save_checkpoint(
        self, model: VAE, optimizer: torch.optim.Adam, args: Namespace, metrics: dict, device
    ) -> None:
        """Add the epoch's metrics to the history; write its checkpoint and metrics line (both, or
        neither) on the writer's thread while the next epoch trains.

        What is written is a copy taken now, on the CPU; an error of an earlier write is raised
        here (a WriteError).
        """
        weights = list(model.parameters())
        if not torch.stack([torch.isfinite(w).all() for w in weights]).all():  # one host sync
            raise NonFiniteLoss(f"the weights became non-finite in epoch {metrics['epoch']}")
        for key, value in metrics.items():  # metrics.jsonl is strict JSON: no NaN, no Infinity
            if isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteLoss(f"the {key} became {value} at epoch {metrics['epoch']}")
        self.history.append(metrics)
        state = {
            "model": on_cpu(model.state_dict()),
            "optimizer": on_cpu(optimizer.state_dict()),
            "epoch": metrics["epoch"],
            "args": dict(vars(args)),
            "rng": rng_state(device),
            "history": list(self.history),
            "lr_schedule": dict(self.lr_span),
        }

        def write() -> None:
            disk_write(save_checkpoint, self.out / "checkpoint.pt", state, self.metrics, metrics)
            self.saved_epochs = metrics["epoch"]
            disk_write(write_atomically, self.out / "args.json", args_text(state["args"]))

        self.writer.submit(write)

    def finish(self) -> None:
        """Wait for the writes in flight (Ctrl-C held off meanwhile); raise an error of theirs."""
        self.writer.wait()

    def remove_if_empty(self) -> None:
        """A run that failed before writing anything leaves no folder it created behind."""
        if self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()
