"""A run's files: the checkpoint (written atomically), metrics.jsonl, and the RNG states they carry.

A Ctrl-C during a write is held until the write is done (ctrl_c.py), so no file is left half
written.
"""

import json
import os
from pathlib import Path

import torch

from helpers.ctrl_c import ctrl_c_held
from helpers.flags import INVOCATION_FLAGS, build_parser

CHECKPOINT_KEYS = {"model", "optimizer", "epoch", "args", "rng", "history"}
DEFAULTS = vars(build_parser().parse_args([]))  # each flag's default: its kind in a checkpoint


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
    if wrong := wrong_types(state):
        raise CheckpointError(
            f"{path} is not a checkpoint written by main.py ({wrong}): "
            "give the path of a run's checkpoint.pt"
        )
    return state


def _same_kind(value, default) -> bool:
    """Whether a saved flag's value is of the kind of its default (an int does for a float)."""
    if isinstance(default, bool) or isinstance(default, str):
        return type(value) is type(default)
    if isinstance(default, float):
        return type(value) in (int, float)
    if isinstance(default, int):
        return type(value) is int
    if isinstance(default, list):
        return isinstance(value, list) and all(type(v) is int for v in value)
    return True


def wrong_types(state: dict) -> str | None:
    """What in a checkpoint's dict is not what main.py writes there, or None."""
    epoch, history = state["epoch"], state["history"]
    if type(epoch) is not int or epoch < 1:
        return f"epoch {epoch!r} is not a count of epochs"
    for key in ("model", "optimizer", "args", "rng"):
        if not isinstance(state[key], dict):
            return f"{key} is a {type(state[key]).__name__}, not a dict"
    for flag, value in state["args"].items():
        if flag in INVOCATION_FLAGS:  # never read from a checkpoint (amp: what ran, a bool)
            continue
        default = DEFAULTS.get(flag)
        if default is not None and value is not None and not _same_kind(value, default):
            return f"its flag {flag} is {value!r}, not a {type(default).__name__}"
    if not isinstance(state["rng"].get("cpu"), torch.Tensor):
        return "rng holds no CPU generator state"
    if not isinstance(history, list) or len(history) != epoch:
        return f"its history is not a row for each of its {epoch} epochs"
    for row in history:
        if not isinstance(row, dict) or type(row.get("epoch")) is not int:
            return "its history holds a row that is not an epoch's"
        try:
            json.dumps(row, allow_nan=False)
        except (TypeError, ValueError):
            return f"epoch {row['epoch']}'s metrics are not finite numbers"
    if not isinstance(state.get("lr_schedule", {}), dict):
        return "lr_schedule is not a dict"
    return None


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


def write_atomically(path: Path, text: str) -> None:
    """Write a small file whole or not at all: a temporary file renamed over it. A failure (a
    full disk: OSError, naming `path`) removes the temporary file and leaves the old one."""
    tmp = path.with_name(path.name + ".tmp")
    with ctrl_c_held():
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as error:
            if not error.filename:  # a write's error names no file
                raise OSError(error.errno, error.strerror, str(path)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)


def metrics_line(row: dict) -> str:
    """A row as a line of metrics.jsonl: strict JSON (a non-finite number is a ValueError, never
    written as NaN or Infinity, which strict readers reject)."""
    return json.dumps(row, allow_nan=False) + "\n"


def write_metrics(path: Path, history: list[dict], keep_evaluations_to: int) -> None:
    """Rewrite metrics.jsonl atomically from the checkpoint's history (dropping torn, later lines),
    keeping the evaluation lines of epochs the checkpoint has reached."""
    evaluations = [
        row
        for row in read_metrics(path)
        if "evaluation" in row
        and type(row.get("epoch")) is int
        and row["epoch"] <= keep_evaluations_to
    ]
    write_atomically(path, "".join(map(metrics_line, history + evaluations)))


def append_metrics(path: Path, row: dict) -> None:
    line = metrics_line(row)
    with ctrl_c_held(), open(path, "a") as f:
        f.write(line)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (none if it does not exist), skipping a torn last line and any
    line that is not a JSON object (damaged bytes, NaN)."""
    rows = []
    if Path(path).exists():
        for line in Path(path).read_bytes().splitlines():
            try:
                row = json.loads(line, parse_constant=_no_constant)
            except ValueError:  # not JSON, not UTF-8, or NaN/Infinity
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _no_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")
