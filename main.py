"""Train a VAE on MNIST and watch test images and their reconstructions in Visdom.

    make server    # one terminal: Visdom (without it, the pictures go to PNG files)
    make run       # another (.venv/bin/python main.py); then open http://localhost:8097

Read it top to bottom: the pieces first (the loss of a batch, one epoch of training, the test pass),
then train(), which runs them in the order a run goes: the data, the model and Adam (new, or resumed
from a checkpoint), and the epochs: train, test, save the checkpoint, push the pictures to Visdom.
main() at the bottom reads the flags and picks the mode. The model and its losses are in vae.py;
every other piece (flags, data, the run folder, the Visdom page, the research options, ...) is in
helpers/, one module per concern (helpers/__init__.py lists them).
"""

import sys

from helpers import flags, startup

if __name__ == "__main__":
    flags.parse(sys.argv[1:])  # --help and a mistyped flag answer here, before torch loads
    startup.before_imports()  # torch loads faster; a stop meanwhile is one line (startup.py)

import time
from argparse import Namespace

import torch

from helpers import data, likelihood, messages, models, no_training, research, settings
from helpers.batches import EpochBatches
from helpers.checkpoint import CheckpointError, append_metrics, set_rng_state
from helpers.ctrl_c import ctrl_c_remembered, exit_status, signal_name
from helpers.latent import MAP_IMAGES, active_units, latent_means
from helpers.pictures import TestPass
from helpers.runfiles import NonFiniteLoss, RunFolder, WriteError, disk_write
from helpers.threads import ThreadTuner
from helpers.visdom_page import Viewer
from vae import VAE, negative_elbo


def loss_function(model: VAE, x: torch.Tensor, args: Namespace) -> torch.Tensor:
    """The negative ELBO of a batch, per image: reconstruction error (squared, by default) plus
    β times the KL divergence of the latent code from N(0, I) (vae.py)."""
    logits, mu, logvar = model(x)
    loss, _, _ = negative_elbo(logits, x, mu, logvar, args.beta, args.likelihood)
    return loss


def train_epoch(model: VAE, optimizer: torch.optim.Optimizer, loss_fn, batches) -> float:
    """One pass over the shuffled training set, a step of Adam per batch; the mean loss per
    image. `batches` (helpers/batches.py) keeps each step's loss on the device, no host sync."""
    model.train()
    for x in batches:
        loss = loss_fn(model, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batches.record(loss)
    return batches.mean_loss()


def test(model: VAE, images: torch.Tensor, args: Namespace, epoch: int) -> tuple[dict, TestPass]:
    """The test pass: the loss of each test image (the negative ELBO, with its two parts) and the
    KL of each latent dimension; the latent means of the first MAP_IMAGES and which dimensions
    they use; every --watch-every epochs an estimate of −log p(x). Returns the metrics, and the
    pass itself for the pictures."""
    means = latent_means(model, images[:MAP_IMAGES])
    activity = active_units(means)
    loss = likelihood.test_loss(model, images, args)
    metrics = {**loss.metrics(), "active_units": activity.count}
    metrics.update(likelihood.watch_estimate(model, images, args, epoch))
    return metrics, TestPass(means, activity, loss)


def train(args: Namespace, checkpoint: dict | None, folder: RunFolder, device: torch.device) -> int:
    """Train a new run, or resume one, to --epochs; after each epoch test, save and show."""
    # the data: each split one tensor of pixels on the device
    splits = data.load(args, device)
    # the model (vae.py's VAE, sized by the flags) and Adam
    model = models.build_model(args, device)
    optimizer = models.build_optimizer(model, args)
    if checkpoint:  # resumed: the weights, Adam's state, the random generators, the epochs done
        models.restore(model, optimizer, checkpoint, args)  # and the lr: --lr, or the schedule's
        set_rng_state(checkpoint["rng"], device)
        folder.continue_from(checkpoint)  # metrics.jsonl cut back to the checkpoint's epoch
    else:  # new: the decoder starts at the training set's mean image
        model.start_at_mean_image(splits.train.mean(0))
        folder.write_args(args)  # args.json (a resumed run's is rewritten with each checkpoint)
    epochs_done = len(folder.history)
    # the research options (helpers/research.py): another objective, bf16, torch.compile; an lr
    # schedule and gradient clipping on Adam's step. Without them: loss_function and plain Adam
    loss_fn = research.training_loss(args, loss_function)
    research.adjust_adam_steps(optimizer, args, folder.lr_span, len(splits.train), epochs_done)
    # the thread count, tuned while the steps run (helpers/threads.py), and the Visdom page
    threads = ThreadTuner.for_run(args.threads, device, paused=folder.writer.busy)
    names = data.class_names(args.dataset)
    viewer = Viewer.for_run(args, splits.test, splits.test_labels, names, folder.writer)
    first_line = messages.describe(args, len(splits.train), len(splits.test), device, epochs_done)
    print(f"{first_line}; {threads.describe()}")

    start = time.perf_counter() - (folder.history[-1]["elapsed_seconds"] if epochs_done else 0)
    try:
        for epoch in range(epochs_done + 1, args.epochs + 1):
            # train an epoch, timed
            tick = time.perf_counter()
            batches = EpochBatches(splits.train, args.batch_size, args.binarize, epoch, threads)
            train_loss = train_epoch(model, optimizer, loss_fn, batches)
            seconds = time.perf_counter() - tick
            # test
            test_metrics, test_pass = test(model, splits.test, args, epoch)
            lr = optimizer.param_groups[0]["lr"]
            metrics = {"epoch": epoch, "train_loss": train_loss, "lr": lr, **test_metrics}
            metrics.update(
                epoch_seconds=seconds,
                eval_seconds=time.perf_counter() - tick - seconds,
                elapsed_seconds=time.perf_counter() - start,
                train_images_per_second=len(splits.train) / seconds,
                threads=threads.epoch_threads(),
            )
            # the checkpoint with its metrics line, written by another thread from a copy; then
            # the epoch's line (a stop after it still finds the epoch saved)
            folder.save_checkpoint(model, optimizer, args, metrics, device)
            print(messages.epoch_line(args, metrics))
            # the pictures, drawn now, pushed to Visdom (or written as PNGs) by that thread
            viewer.push_pictures(model, epoch, folder.history, test_pass)
    finally:  # done, stopped or failed: the writes in flight end, the last pictures go to PNGs
        try:
            folder.finish()
        finally:
            disk_write(viewer.save)

    # after the last epoch: −log p(x) if --eval-k asks for it, and where to look
    if args.eval_k:
        metrics = likelihood.log_likelihood(model, splits.test, args, args.eval_k, args.epochs)
        disk_write(append_metrics, folder.metrics, metrics)
    print(messages.done_line(args, folder.history, viewer.online))
    return 0


def main(argv: list[str]) -> int:
    """Run what the flags ask for. Exit status: 0 done; 1 a failure, explained in one line;
    2 a bad flag or checkpoint; 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (the last finished epoch is
    kept)."""
    startup.after_imports()  # the collector on again; denormal floats flushed (helpers/startup.py)
    # the flags, with the checkpoint's that --resume, --evaluate or --generate names (loaded here);
    # a bad flag or checkpoint exits here, before any work
    args, checkpoint = settings.resolve(argv)
    folder = RunFolder.prepare(args)  # a run folder is one run's: locked, or refused in one line
    device = settings.pick_device(args.device)
    args.amp = research.bf16_pays(args.amp, args.hidden, device)  # auto: where bf16 pays
    if args.threads:
        torch.set_num_threads(args.threads)  # in training, threads.ThreadTuner keeps it
    torch.manual_seed(args.seed)  # seeded once: every draw of the run follows from --seed
    mode = train
    if args.evaluate or args.generate:  # a checkpoint without training (helpers/no_training.py)
        mode = no_training.evaluate if args.evaluate else no_training.generate
    try:
        with ctrl_c_remembered():
            return mode(args, checkpoint, folder, device)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM or SIGHUP
        print(f"\n{messages.interrupted(args, folder, signal_name(stop))}")
        return exit_status(stop)
    except (data.DataError, CheckpointError, NonFiniteLoss, WriteError) as error:
        print(f"error: {messages.failure(error, args, folder)}", file=sys.stderr)
        return 2 if isinstance(error, CheckpointError) else 1
    finally:
        folder.lock.release()
        folder.remove_if_empty()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
