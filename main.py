"""Train a VAE on MNIST and watch test images and their reconstructions in Visdom.

    make server    # one terminal: Visdom (without it, the pictures go to PNG files)
    make run       # another (.venv/bin/python main.py); then open http://localhost:8097

This file is the script, in the order it runs: the loss of a batch, one epoch of training, then
train(): data, model and Adam, and the epochs (train, test, save, show). main() at the bottom
reads the flags and picks the mode. The model and its losses are in vae.py; every other piece
(flags, data, run files, the viewer, ...) is in helpers/, one module per concern.
"""

import gc
import sys

from helpers import ctrl_c, flags

if __name__ == "__main__":  # --help and a mistyped flag answer here, before torch loads
    flags.parse(sys.argv[1:])
    ctrl_c.quiet_start_up()  # Ctrl-C or SIGTERM while torch loads: one line, no traceback
    gc.disable()  # torch's imports make a million objects and no garbage: nothing to collect

import functools
import math
import time
from argparse import Namespace
from collections.abc import Callable

import torch
from tqdm import tqdm

from helpers import data, likelihood, messages, modes, runfiles, schedules, settings, viewer
from helpers.checkpoint import CheckpointError, append_metrics
from helpers.ctrl_c import ctrl_c_remembered, raise_if_ctrl_c
from helpers.latent import MAP_IMAGES, active_units, latent_means
from helpers.runfiles import writing
from helpers.threads import ThreadTuner
from vae import VAE, negative_elbo


def batch_loss(model: VAE, x: torch.Tensor, args: Namespace) -> torch.Tensor:
    """The negative ELBO of a batch, per image: reconstruction + β·KL (vae.py).

    --objective iwae: the negative importance-weighted bound with k = --train-k instead; --stl
    (sticking the landing) computes the ELBO as that bound at k = 1, its KL from the one sample,
    with the encoder's gradient less the score term. Under --amp
    the forward pass runs in bf16. --compile compiles this whole function, so that the loss's many
    small operations and their backward are compiled with the model.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
        if args.objective == "iwae" or args.stl:
            k = args.train_k if args.objective == "iwae" else 1
            return likelihood.negative_iw_bound(model, x, k, args.likelihood, args.stl)
        logits, mu, logvar = model(x)
    loss, _, _ = negative_elbo(
        logits.float(), x, mu.float(), logvar.float(), args.beta, args.likelihood
    )
    return loss


def loss_function(args: Namespace) -> Callable:
    """batch_loss, compiled under --compile: what train_epoch calls each step."""
    return torch.compile(batch_loss) if args.compile else batch_loss


def train_epoch(
    model: VAE,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    pixels: torch.Tensor,
    args: Namespace,
    epoch: int,
    device: torch.device,
    threads: ThreadTuner,
    lr_at: Callable[[float], float] | None = None,
) -> float:
    """One pass over the shuffled training set; returns the mean loss per image.

    `lr_at` (if any) gives each step's lr from the epochs done by its end (schedules.py).
    No host sync per step: each step's loss goes into a tensor on the device, which the host
    reads every `report_every` steps for the progress bar and the check for a non-finite loss.
    `threads` times the steps on the CPU and sets the thread count (helpers/threads.py).
    """
    model.train()
    threads.begin_epoch()
    n = pixels.shape[0]
    order = torch.randperm(n, device=device)
    steps = math.ceil(n / args.batch_size)
    losses = torch.empty(steps, device=device)
    report_every, checked = 50, 0
    with tqdm(total=steps, desc=f"epoch {epoch}", unit="step", disable=None, leave=False) as bar:
        for step in range(steps):
            # a batch by index into the split on the device; fresh binary pixels if dynamic
            x = pixels[order[step * args.batch_size : (step + 1) * args.batch_size]]
            if args.binarize == "dynamic":
                x = torch.bernoulli(x)
            # one step of Adam on the loss, at the schedule's lr, the gradient's norm clipped
            if lr_at is not None:
                schedules.set_lr(optimizer, lr_at(epoch - 1 + (step + 1) / steps))
            loss = loss_fn(model, x, args)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            losses[step] = loss.detach()
            threads.step()
            raise_if_ctrl_c()  # a Ctrl-C that Python dropped (in a finalizer) still stops here
            # now and then: look at the losses so far (a host sync), stop on a non-finite one
            if (step + 1) % report_every == 0 or step + 1 == steps:
                recent = losses[checked : step + 1]
                if not torch.isfinite(recent).all():
                    first = checked + int((~torch.isfinite(recent)).nonzero()[0])
                    raise runfiles.NonFiniteLoss(
                        f"the loss became non-finite at epoch {epoch}, step {first + 1} of {steps}"
                    )
                bar.set_postfix(loss=f"{recent.mean().item():.2f}", refresh=False)
                bar.update(step + 1 - checked)
                checked = step + 1
    last = n - (steps - 1) * args.batch_size  # images in the last, possibly smaller, batch
    return ((losses[:-1].sum() * args.batch_size + losses[-1] * last) / n).item()


def train(
    args: Namespace, checkpoint: dict | None, folder: runfiles.RunFolder, device: torch.device
) -> int:
    """Train a new run, or resume one, to --epochs; after each epoch test, save and show."""
    # the data: each split one tensor on the device
    splits = data.load(args, device)
    # the model and Adam: new (the decoder starting at the mean image), or the checkpoint's
    model = runfiles.build_model(args, device)
    optimizer = runfiles.build_optimizer(model, args)
    folder.start(args, checkpoint, model, optimizer, device)
    if not checkpoint:
        model.start_at_mean_image(splits.train.mean(0))
    loss_fn = loss_function(args)
    lr_at = schedules.lr_function(args, folder.span)
    threads = ThreadTuner.for_run(args.threads, device, tqdm.write, paused=folder.writer.busy)
    names = data.class_names(args.dataset)
    show = viewer.Viewer.for_run(args, splits.test, splits.map_labels, names)
    done = len(folder.history)
    first_line = messages.describe(args, len(splits.train), len(splits.test), device, done)
    print(f"{first_line}; {threads.describe()}")

    start = time.perf_counter() - (folder.history[-1]["elapsed_seconds"] if done else 0.0)
    try:
        for epoch in range(done + 1, args.epochs + 1):
            # an epoch of training, timed
            tick = time.perf_counter()
            train_loss = train_epoch(
                model, loss_fn, optimizer, splits.train, args, epoch, device, threads, lr_at
            )
            seconds = time.perf_counter() - tick
            # the test set: the latent means and active dimensions, the loss, now and then −log p(x)
            means = latent_means(model, splits.test[:MAP_IMAGES])  # the latent map's points
            activity = active_units(means)
            row = {"epoch": epoch, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"]}
            row.update(likelihood.test_loss(model, splits.test, args), active_units=activity.count)
            row.update(likelihood.watch_estimate(model, splits.test, args, epoch))
            row.update(
                epoch_seconds=seconds,
                eval_seconds=time.perf_counter() - tick - seconds,
                elapsed_seconds=time.perf_counter() - start,
                train_images_per_second=len(splits.train) / seconds,
                threads=threads.epoch_threads(),
            )
            print(messages.epoch_line(args, row))
            # the pictures' grids, drawn here; then the checkpoint with its metrics line, and the
            # pictures sent or written, by another thread from a copy while the next epoch trains
            grids, latent = show.pictures(model, epoch, means, activity)
            then = functools.partial(show.show, grids, latent=latent)  # then(history)
            folder.save_epoch(model, optimizer, args, row, device, then)
    finally:  # done, stopped or failed: the write in flight ends, the last pictures go to PNGs
        try:
            folder.finish()
        finally:
            writing(show.save)

    # after the last epoch: −log p(x) if --eval-k asks for it, and where to look
    if args.eval_k:
        row = likelihood.log_likelihood(model, splits.test, args, args.eval_k, args.epochs)
        writing(append_metrics, folder.metrics, row)
    print(messages.done_line(args, folder.history, show.online))
    return 0


def main(argv: list[str]) -> int:
    """Run what the flags ask for. Exit status: 0 done; 1 a failure, explained in one line;
    2 a bad flag or checkpoint; 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (the last finished epoch is
    kept)."""
    gc.freeze()  # torch's million objects stay: the collector skips them, now and at exit,
    gc.enable()  # and collects the run's own
    settings.flush_denormals()
    args, checkpoint, folder = settings.resolve(argv)  # a bad flag exits here, before any work
    device = settings.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # in training, threads.ThreadTuner keeps it
    torch.manual_seed(args.seed)  # seeded once: every draw of the run follows from --seed
    mode = modes.generate if args.generate else modes.evaluate if args.evaluate else train
    try:
        with ctrl_c_remembered():
            return mode(args, checkpoint, folder, device)
    except KeyboardInterrupt as stop:
        print(f"\n{messages.interrupted(args, folder, ctrl_c.signal_name(stop))}")
        return ctrl_c.exit_status(stop)
    except (data.DataError, CheckpointError, runfiles.NonFiniteLoss, runfiles.WriteError) as error:
        print(f"error: {messages.failure(error, args, folder)}", file=sys.stderr)
        return 2 if isinstance(error, CheckpointError) else 1
    finally:
        folder.lock.release()
        folder.remove_if_empty()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
