"""A run's files: the checkpoint (written atomically), metrics.jsonl, and the RNG states they carry.

A Ctrl-C during a write is held until the write is done (ctrl_c.py), so no file is left half
written.
"""

import json
import math
import os
from pathlib import Path

import torch

from helpers.ctrl_c import ctrl_c_held

CHECKPOINT_KEYS = {"model", "optimizer", "epoch", "args", "rng", "history"}


class CheckpointError(Exception):
    """A file that cannot be used as a checkpoint; the message says why and what to do."""


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by main.py, or a CheckpointError that says what is wrong with it."""
    if not Path(path).is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: give the path of a run's checkpoint.pt"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a checkpoint written by main.py ({type(error).__name__}): "
            "give the path of a run's checkpoint.pt"
        ) from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        raise CheckpointError(
            f"{path} is not a checkpoint written by main.py (keys missing): "
            "give the path of a run's checkpoint.pt"
        )
    return state


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def save_checkpoint(path: Path, state: dict, metrics: Path, row: dict) -> None:
    """Write the checkpoint and its line of metrics.jsonl together or not at all: the checkpoint
    to a temporary file, flushed to disk; the line appended; then the file renamed over the old
    checkpoint. A failure (a full disk: OSError) undoes the line and leaves the old checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    size = metrics.stat().st_size if metrics.exists() else 0
    with ctrl_c_held():
        try:
            with open(tmp, "wb") as f:
                try:
                    torch.save(state, f)
                except RuntimeError as error:  # torch's own error for a failed write: its cause
                    if isinstance(error.__context__, OSError):
                        raise error.__context__ from None
                    raise
                f.flush()
                os.fsync(f.fileno())
            append_metrics(metrics, row)
            os.replace(tmp, path)
        except BaseException as error:
            if metrics.exists() and metrics.stat().st_size > size:
                os.truncate(metrics, size)  # frees space: possible on a full disk
            if isinstance(error, OSError) and not error.filename:  # a write's error names no file
                raise OSError(error.errno, error.strerror, str(path)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)


def write_metrics(path: Path, history: list[dict], keep_evaluations_to: int) -> None:
    """Rewrite metrics.jsonl atomically from the checkpoint's history (dropping torn, later lines),
    keeping the evaluation lines of epochs the checkpoint has reached."""
    evaluations = [
        row
        for row in read_metrics(path)
        if "evaluation" in row and row.get("epoch", math.inf) <= keep_evaluations_to
    ]
    tmp = path.with_name(path.name + ".tmp")
    with ctrl_c_held():
        tmp.write_text("".join(json.dumps(row) + "\n" for row in history + evaluations))
        os.replace(tmp, path)


def append_metrics(path: Path, row: dict) -> None:
    with ctrl_c_held(), open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (none if it does not exist), skipping a torn last line."""
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows
