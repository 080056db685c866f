"""The learning rate at each step: a linear warm-up, then constant, cosine, exponential or Burda's.

A schedule runs over a span of epochs, {"start": s, "end": e}, kept in the checkpoint: a resumed
run goes on with it, and a schedule flag given to --resume starts a new span there.
"""

import functools
import math
from argparse import Namespace
from collections.abc import Callable

import torch


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def scheduled_lr(args: Namespace, span: dict, progress: float) -> float:
    """The lr `progress` epochs into the run (fractional) for a schedule set at epoch
    span["start"] to end at span["end"]: a linear warm-up, then --lr-schedule, the floor after."""
    done = progress - span["start"]
    if done < args.warmup_epochs:
        return args.lr * done / args.warmup_epochs
    if args.lr_schedule == "burda":  # stage i lasts 3^i epochs: epochs (3^i - 1)/2 + 1 ... on
        epoch, stage = math.ceil(done), 0
        while stage < 7 and epoch > (3 ** (stage + 1) - 1) // 2:
            stage += 1
        return args.lr * 10 ** (-stage / 7)
    decay_epochs = max(span["end"] - span["start"] - args.warmup_epochs, 1e-9)
    t = min(1.0, (done - args.warmup_epochs) / decay_epochs)  # 0 → 1 over the decay
    if args.lr_schedule == "cosine":
        return args.lr * (args.lr_floor + (1 - args.lr_floor) * (1 + math.cos(math.pi * t)) / 2)
    if args.lr_schedule == "exponential":
        return args.lr * args.lr_floor**t
    return args.lr


def lr_function(args: Namespace, span: dict) -> Callable[[float], float] | None:
    """The lr as a function of the (fractional) epochs done; None for a constant lr."""
    if args.lr_schedule == "constant" and not args.warmup_epochs:
        return None
    return functools.partial(scheduled_lr, args, span)
