"""The research options, behind one seam: what they make of main.py's loss and of Adam's step.

A run without them trains with main.py's loss_function (the negative ELBO; wrapped in an
autocast that is off) and plain Adam (no hooks on its step). The two calls main.py makes:

- bf16_pays: what --amp auto means on this device for this model;
- training_loss: --objective iwae (the importance-weighted bound, Burda et al. 2015; its encoder
  gradient doubly reparameterized with --dreg, Tucker et al. 2018) or --stl (sticking the
  landing, Roeder et al. 2017) in place of the ELBO; --amp runs it in bf16,
  --compile compiles it with the model;
- adjust_adam_steps: before each step of Adam, the lr of --lr-schedule and --warmup-epochs
  (schedules.py) and the gradient's norm clipped to --clip-grad.
"""

import functools
import itertools
from argparse import Namespace
from collections.abc import Callable

import torch

from helpers import schedules
from helpers.batches import steps_per_epoch
from helpers.flags import AMP_MIN_WIDTH
from helpers.likelihood import negative_iw_bound
from vae import VAE

Loss = Callable[[VAE, torch.Tensor, Namespace], torch.Tensor]


def bf16_pays(amp: str, hidden: list[int], device: torch.device) -> bool:
    """Whether the training step runs in bf16 autocast: --amp on or off as given; auto: where torch
    reports native bf16 (CUDA; a CPU whose oneDNN has bf16 kernels) and every hidden layer has
    at least AMP_MIN_WIDTH units (narrower matmuls are too small to gain: docs/speed.md)."""
    if amp != "auto":
        return amp == "on"
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return native and min(hidden) >= AMP_MIN_WIDTH


def importance_weighted_loss(model: VAE, x: torch.Tensor, args: Namespace) -> torch.Tensor:
    """−(the IWAE bound) with --train-k samples, its encoder gradient as --stl or --dreg say;
    with --stl alone, k = 1: the ELBO with a one-sample KL, whose encoder gradient drops the score
    term."""
    k = args.train_k if args.objective == "iwae" else 1
    return negative_iw_bound(model, x, k, args.likelihood, args.stl, dreg=args.dreg)


def training_loss(args: Namespace, elbo: Loss) -> Callable[[VAE, torch.Tensor], torch.Tensor]:
    """The loss a run minimizes, as loss(model, x): `elbo` (main.py's) unless --objective iwae or
    --stl names the importance-weighted one; in bf16 autocast under --amp (the losses themselves
    in float32), compiled under --compile."""
    chosen = importance_weighted_loss if args.objective == "iwae" or args.stl else elbo

    def loss(model: VAE, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
            return chosen(model, x, args)

    return torch.compile(loss) if args.compile else loss


def adjust_adam_steps(
    optimizer: torch.optim.Optimizer,
    args: Namespace,
    lr_span: dict,
    train_images: int,
    epochs_done: int,
) -> None:
    """Hooks run before each optimizer.step(): the scheduled lr for the step's end (fractional
    epochs, counted from `epochs_done`), and the gradient clipped to --clip-grad; none for a
    constant lr without clipping."""
    lr_at = schedules.lr_function(args, lr_span)
    if lr_at is not None:
        steps = steps_per_epoch(train_images, args.batch_size)
        optimizer.register_step_pre_hook(
            functools.partial(_set_scheduled_lr, lr_at, steps, epochs_done, itertools.count())
        )
    if args.clip_grad:
        optimizer.register_step_pre_hook(functools.partial(_clip_gradient, args.clip_grad))


def _set_scheduled_lr(lr_at, steps: int, epochs_done: int, count, optimizer, *_) -> None:
    """Set the lr for the end of the step about to be taken; `count` counts the steps taken."""
    epoch, step = divmod(next(count), steps)
    schedules.set_lr(optimizer, lr_at(epochs_done + epoch + (step + 1) / steps))


def _clip_gradient(max_norm: float, optimizer, *_) -> None:
    """Scale the gradient of every parameter so that their total norm is at most max_norm."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
