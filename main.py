"""Train a VAE on MNIST and watch test images and their reconstructions in Visdom.

    make server    # one terminal: Visdom (without it, the pictures go to PNG files)
    make run       # another (.venv/bin/python main.py); then open http://localhost:8097

Three modes: train (a new run, or --resume one), --evaluate a checkpoint, --generate from one.
Every flag is in flags.py; the model and its losses in vae.py.
"""

import sys

import flags

if __name__ == "__main__":  # answer --help and a mistyped flag before torch loads (seconds)
    flags.parse(sys.argv[1:])

import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from argparse import Namespace  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from checkpoint import (  # noqa: E402
    CheckpointError,
    append_metrics,
    ctrl_c_held,
    ctrl_c_remembered,
    load_checkpoint,
    raise_if_ctrl_c,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_metrics,
)
from data import (  # noqa: E402
    DataError,
    class_names,
    load_images,
    load_split,
    to_pixels,
    to_test_pixels,
)
from latent import MAP_IMAGES, active_units, latent_map, latent_means  # noqa: E402
from threads import ThreadTuner  # noqa: E402
from vae import (  # noqa: E402
    GAUSSIAN_LOG_NORMALIZER,
    GAUSSIAN_VARIANCE,
    VAE,
    importance_weighted_log_likelihood,
    kl_divergence,
    negative_elbo,
    negative_iw_bound,
    reconstruction_loss,
    reparameterize,
)
from viewer import Viewer, figures, save_pngs  # noqa: E402

# Keys of metrics.jsonl that depend on the machine and its load, not on the seed.
TIMING_KEYS = (
    "epoch_seconds",
    "eval_seconds",
    "elapsed_seconds",
    "train_images_per_second",
    "threads",
)


class NonFiniteLoss(Exception):
    pass


# ---- Settings: the flags, merged with a checkpoint's, checked before any work ----


def flush_denormals() -> None:
    """Treat floats below 1.2e-38 as zero on the CPU, which computes on them slowly.

    Adam's second moments for the pixels the decoder switches off sink into that range. Call this
    before torch's first parallel work: its worker threads copy the setting when they start.
    """
    torch.set_flush_denormal(True)


def merge_checkpoint(args: Namespace, argv: list[str], checkpoint: dict) -> None:
    """Take the checkpoint's settings for every flag not given; model flags must agree with it."""
    given, saved = flags.given(argv), checkpoint["args"]
    for flag in flags.MODEL_FLAGS:  # saved.get: older checkpoints lack newer model flags
        if flag in given and getattr(args, flag) != saved.get(flag):
            flags.fail(
                f"the checkpoint has {flag} {saved.get(flag)}, the flags say "
                f"{getattr(args, flag)}: drop --{flag.replace('_', '-')} to continue it, "
                "or start a new run"
            )
    for key, value in saved.items():
        if key not in given and key not in flags.MODE_FLAGS:
            setattr(args, key, value)
    if args.resume and args.epochs <= checkpoint["epoch"]:
        flags.fail(
            f"the checkpoint has finished {checkpoint['epoch']} epochs already: "
            f"pass --epochs N with N > {checkpoint['epoch']} to train further"
        )
    if args.resume and (given & set(flags.SCHEDULE_FLAGS) or "lr_schedule" not in checkpoint):
        # a new lr schedule from here to --epochs (checkpoints without one had a constant lr)
        checkpoint["lr_schedule"] = {"start": checkpoint["epoch"], "end": args.epochs}


def prepare_out(args: Namespace, source: str | None) -> bool:
    """Pick and test-write the run folder; True if this run created it."""
    if args.out is None:
        args.out = (
            str(Path(source).parent) if source else f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}"
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
    return created


def settings(argv: list[str]) -> tuple[Namespace, dict | None, bool]:
    """(flags, the checkpoint they name or None, whether the run folder is new); exit 2 on a bad
    flag, before any data is read."""
    args = flags.parse(argv)
    source = args.resume or args.evaluate or args.generate
    checkpoint = None
    if source:
        try:
            checkpoint = load_checkpoint(source)
        except CheckpointError as error:
            flags.fail(str(error))
        merge_checkpoint(args, argv, checkpoint)
    flags.check(args)
    for kind, available in (
        ("cuda", torch.cuda.is_available),
        ("mps", torch.backends.mps.is_available),
    ):
        if args.device == kind and not available():
            flags.fail(
                f"--device {kind}: torch finds no {kind.upper()} device here; "
                "use --device auto or cpu"
            )
    return args, checkpoint, prepare_out(args, source)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = (
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    return torch.device(name)


# ---- The model, its optimizer, the data ----


def build_model(args: Namespace, device: torch.device) -> VAE:
    sizes = (784, tuple(args.hidden), args.latent_dim)
    return VAE(*sizes, args.activation, args.decoder_activation).to(device)


def build_optimizer(model: VAE, args: Namespace) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=args.lr, eps=args.adam_eps, fused=True)


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


class Data(NamedTuple):
    """The splits as float pixels [N,784] on the device, and the latent map's labels."""

    train: torch.Tensor | None
    test: torch.Tensor
    map_labels: torch.Tensor


def load_data(args: Namespace, device: torch.device, train: bool = True) -> Data:
    """The test split (binarized once, seeded, when the run binarizes), and the training split."""
    images = load_images(args.dataset, args.data_dir, train=True) if train else None
    test_images, test_labels = load_split(args.dataset, args.data_dir, train=False)
    return Data(
        to_pixels(images, device, args.binarize, seed=args.seed) if train else None,
        to_test_pixels(test_images, device, args.binarize),
        test_labels[:MAP_IMAGES],
    )


# ---- Training: the loss of a batch, an epoch, the test set ----


def batch_loss(model: VAE, x: torch.Tensor, args: Namespace) -> torch.Tensor:
    """The negative ELBO of a batch, or with --objective iwae the negative importance-weighted
    bound (k = --train-k); --stl changes the encoder's gradient, not the value (but the ELBO then
    uses a one-sample KL). Under --amp the forward pass runs in bf16.

    With --compile this whole function is compiled, the loss with the model, so that its backward
    is compiled too: compiling the model alone leaves the loss's many small operations eager.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
        if args.objective == "iwae" or args.stl:
            k = args.train_k if args.objective == "iwae" else 1
            return negative_iw_bound(model, x, k, args.likelihood, args.stl)
        logits, mu, logvar = model(x)
    loss, _, _ = negative_elbo(
        logits.float(), x, mu.float(), logvar.float(), args.beta, args.likelihood
    )
    return loss


def loss_function(args: Namespace):
    """batch_loss, compiled under --compile: what train_epoch calls each step."""
    return torch.compile(batch_loss) if args.compile else batch_loss


def train_epoch(
    model,
    loss_fn,
    optimizer,
    pixels,
    args,
    epoch: int,
    device: torch.device,
    threads: ThreadTuner,
    lr_at: Callable[[float], float] | None = None,
) -> float:
    """One pass over the shuffled training set; returns the mean loss per image. `lr_at` (if any)
    gives each step's lr from the epochs done by its end; --clip-grad clips each gradient.

    No host sync per step: each step's loss goes into a tensor on the device, which the host
    reads every `report_every` steps for the progress bar and the check for a non-finite loss.
    `threads` times the steps on the CPU and sets the thread count (threads.py).
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
                set_lr(optimizer, lr_at(epoch - 1 + (step + 1) / steps))
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
                    raise NonFiniteLoss(
                        f"the loss became non-finite at epoch {epoch}, step {first + 1} of {steps}"
                    )
                bar.set_postfix(loss=f"{recent.mean().item():.2f}", refresh=False)
                bar.update(step + 1 - checked)
                checked = step + 1
    last = n - (steps - 1) * args.batch_size  # images in the last, possibly smaller, batch
    return ((losses[:-1].sum() * args.batch_size + losses[-1] * last) / n).item()


@torch.inference_mode()
def evaluate(model, pixels, args, batch: int = 5000) -> dict:
    """Negative ELBO with its parts on a whole split, per image; the same ε every call (seeded)."""
    model.eval()
    generator = torch.Generator(device=pixels.device).manual_seed(args.seed)
    recon = kl = 0.0
    for x in pixels.split(batch):
        mu, logvar = model.encode(x)
        eps = torch.randn(mu.shape, device=mu.device, generator=generator)
        logits = model.decode(reparameterize(mu, logvar, eps))
        recon += reconstruction_loss(logits, x, args.likelihood).sum().item()
        kl += kl_divergence(mu, logvar).sum().item()
    n = pixels.shape[0]
    return {"test_loss": (recon + args.beta * kl) / n, "test_recon": recon / n, "test_kl": kl / n}


@torch.inference_mode()
def mean_log_likelihood(model, pixels, args, k: int, progress: str | None = None) -> float:
    """Importance-weighted log p(x) with k samples, averaged over `pixels`, the same ε every call
    (seeded); with a progress bar titled `progress`."""
    model.eval()
    generator = torch.Generator(device=pixels.device).manual_seed(args.seed)
    batches, total = pixels.split(100), 0.0
    for x in tqdm(batches, desc=progress, unit="batch", mininterval=5, disable=progress is None):
        log_p = importance_weighted_log_likelihood(
            model, x, k, args.likelihood, chunk=500, generator=generator
        )
        total += log_p.sum().item()
    return total / pixels.shape[0]


def watch_estimate(model, test, args, epoch: int) -> dict:
    """Every --watch-every epochs, −log p(x) with k = --watch-k on the first --watch-images test
    images: a cheap view of the log-likelihood; else nothing."""
    if not args.watch_every or epoch % args.watch_every:
        return {}
    images = test[: args.watch_images]
    return {
        "watch_nll": -mean_log_likelihood(model, images, args, args.watch_k),
        "watch_k": args.watch_k,
        "watch_images": images.shape[0],
    }


def density_note(args: Namespace) -> str:
    """What the log-likelihood is of, and how it relates to the test loss."""
    if args.likelihood == "bernoulli":
        return "bernoulli pixels: a probability; −log p(x) ≤ the test loss (the −ELBO)"
    constant = 784 * GAUSSIAN_LOG_NORMALIZER  # 392·log π
    return (
        f"gaussian pixels: the density N(decoder mean, variance 0.5) over [0,1]^784, whose "
        f"−ELBO is the test loss (squared error + KL) + {constant:.2f} (392·log π), so "
        "−log p(x) ≤ test loss + that constant; compare it only with other gaussian figures"
    )


def log_likelihood(model, pixels, args, k: int, epoch: int) -> dict:
    """Importance-weighted log p(x) with k samples on a split: printed, and a metrics row."""
    start = time.perf_counter()
    mean = mean_log_likelihood(model, pixels, args, k, progress=f"log-likelihood, k={k}")
    print(
        f"test log-likelihood (importance-weighted, k={k}, epoch {epoch}): {mean:.2f} nats per "
        f"image; negative: {-mean:.2f}. Of {density_note(args)}"
    )
    return {
        "evaluation": "importance-weighted",
        "epoch": epoch,
        "k": k,
        "test_log_likelihood": mean,
        "test_nll": -mean,
        "likelihood": args.likelihood,
        "decoder_variance": GAUSSIAN_VARIANCE if args.likelihood == "gaussian" else None,
        "eval_seconds": time.perf_counter() - start,
    }


# ---- The three modes ----


def fixed_inputs(args: Namespace, test: torch.Tensor, device: torch.device):
    """The same test images and prior samples every epoch, and the grids' row length."""
    generator = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.num_images, args.latent_dim, generator=generator).to(device)
    return test[: args.num_images], z, max(1, round(math.sqrt(args.num_images)))


def run_generation(args: Namespace, checkpoint: dict, device: torch.device) -> int:
    """--generate: the pictures of a checkpoint and its latent map as PNGs, no training."""
    model = build_model(args, device)
    restore(model, None, checkpoint, args)
    data = load_data(args, device, train=False)
    images, z, nrow = fixed_inputs(args, data.test, device)
    means = latent_means(model, data.test[:MAP_IMAGES])
    activity = active_units(means)
    shown = figures(model.eval(), images, z, checkpoint["epoch"], nrow, activity)
    names = class_names(args.dataset)
    latent = latent_map(means, data.map_labels, names, activity, checkpoint["epoch"])
    print(f"wrote {', '.join(save_pngs(Path(args.out), shown, latent))} to {args.out}")
    return 0


def run_evaluation(args: Namespace, checkpoint: dict, device: torch.device) -> int:
    """--evaluate: the test loss and an importance-weighted log-likelihood of a checkpoint."""
    model = build_model(args, device)
    restore(model, None, checkpoint, args)
    test = load_data(args, device, train=False).test
    elbo = evaluate(model, test, args)
    print(
        f"test loss {elbo['test_loss']:.2f} per image (reconstruction {elbo['test_recon']:.2f} "
        f"+ KL {elbo['test_kl']:.2f})"
    )
    row = log_likelihood(model, test, args, args.eval_k or 5000, checkpoint["epoch"])
    append_metrics(Path(args.out) / "metrics.jsonl", {**row, **elbo})
    return 0


def describe(args: Namespace, data: Data, device, epoch: int) -> str:
    """The run's first line: where, what data, which model, which settings."""
    sizes = "-".join(map(str, [784, *args.hidden, args.latent_dim]))
    activation = args.activation
    if args.decoder_activation not in (None, args.activation):
        activation += f"/{args.decoder_activation} (encoder/decoder)"
    return (
        f"run {args.out}: {args.dataset} ({len(data.train)} train, {len(data.test)} test "
        f"images) on {device}, VAE {sizes} {activation}, {args.likelihood} likelihood, "
        f"binarize {args.binarize}, beta {args.beta}, epochs {epoch + 1}..{args.epochs}, "
        f"batch {args.batch_size}, lr {args.lr}, seed {args.seed}{training_options(args)}"
    )


def training_options(args: Namespace) -> str:
    """The training flags that differ from their defaults, for the run's first line."""
    decays = args.lr_schedule in ("cosine", "exponential")
    options = {
        f"{args.lr_schedule} lr" + (f" to ×{args.lr_floor}" if decays else ""): args.lr_schedule
        != "constant",
        f"warm-up {args.warmup_epochs} epochs": args.warmup_epochs,
        f"Adam eps {args.adam_eps}": args.adam_eps != 1e-8,
        f"gradient norm clipped at {args.clip_grad}": args.clip_grad,
        f"IWAE k={args.train_k}": args.objective == "iwae",
        "sticking the landing": args.stl,
        f"−log p(x) k={args.watch_k} every {args.watch_every} epochs": args.watch_every,
    }
    return "".join(f", {option}" for option, shown in options.items() if shown)


@dataclass
class Run:
    """A training run: its settings, model, optimizer, data, and where it reports."""

    args: Namespace
    model: VAE
    optimizer: torch.optim.Adam
    data: Data
    device: torch.device
    threads: ThreadTuner
    viewer: Viewer
    history: list[dict]  # a row per finished epoch, as in metrics.jsonl
    span: dict  # the epochs the lr schedule runs over (scheduled_lr)


def train_epochs(run: Run) -> None:
    """Train until --epochs; after each epoch evaluate, save, log and show."""
    args, model = run.args, run.model
    loss_fn = loss_function(args)
    scheduled = args.lr_schedule != "constant" or args.warmup_epochs
    lr_at = functools.partial(scheduled_lr, args, run.span) if scheduled else None
    images, z, nrow = fixed_inputs(args, run.data.test, run.device)
    names = class_names(args.dataset)
    start = time.perf_counter() - (run.history[-1]["elapsed_seconds"] if run.history else 0.0)
    for epoch in range(len(run.history) + 1, args.epochs + 1):
        # an epoch of training, timed
        tick = time.perf_counter()
        train_loss = train_epoch(
            model,
            loss_fn,
            run.optimizer,
            run.data.train,
            args,
            epoch,
            run.device,
            run.threads,
            lr_at,
        )
        seconds = time.perf_counter() - tick
        # the test set: loss, active latent dimensions, and (now and then) −log p(x)
        means = latent_means(model, run.data.test[:MAP_IMAGES])  # the map's points
        activity = active_units(means)
        row = {"epoch": epoch, "train_loss": train_loss, "lr": run.optimizer.param_groups[0]["lr"]}
        row.update(evaluate(model, run.data.test, args), active_units=activity.count)
        row.update(watch_estimate(model, run.data.test, args, epoch))
        row.update(
            epoch_seconds=seconds,
            eval_seconds=time.perf_counter() - tick - seconds,
            elapsed_seconds=time.perf_counter() - start,
            train_images_per_second=len(run.data.train) / seconds,
            threads=run.threads.epoch_threads(),
        )
        # save, report, show
        save_epoch(run, row)
        print(epoch_line(args, row))
        run.viewer.show(
            figures(model.eval(), images, z, epoch, nrow, activity),
            run.history,
            latent_map(means, run.data.map_labels, names, activity, epoch),
        )


def save_epoch(run: Run, row: dict) -> None:
    """Add the epoch to the history and write the checkpoint and its metrics line: both, or
    neither (a Ctrl-C waits for them)."""
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise NonFiniteLoss(f"the weights became non-finite in epoch {row['epoch']}")
    out = Path(run.args.out)
    with ctrl_c_held():
        run.history.append(row)
        state = {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "epoch": row["epoch"],
            "args": vars(run.args),
            "rng": rng_state(run.device),
            "history": run.history,
            "lr_schedule": run.span,
        }
        save_checkpoint(out / "checkpoint.pt", state)
        append_metrics(out / "metrics.jsonl", row)


def epoch_line(args: Namespace, row: dict) -> str:
    """The line printed after an epoch."""
    watched = f", −log p(x) {row['watch_nll']:.2f}" if "watch_nll" in row else ""
    return (
        f"epoch {row['epoch']}/{args.epochs}: train {row['train_loss']:.2f}, "
        f"test {row['test_loss']:.2f} (reconstruction {row['test_recon']:.2f} + "
        f"KL {row['test_kl']:.2f}) per image{watched}, "
        f"{row['active_units']} of {args.latent_dim} latent dims active, "
        f"{row['epoch_seconds']:.1f}s, {row['train_images_per_second']:,.0f} images/s"
    )


def start_run(args: Namespace, checkpoint: dict | None, device: torch.device) -> Run:
    """A new run, or the checkpoint's resumed: model, optimizer, data, RNG, metrics, viewer."""
    model, out = build_model(args, device), Path(args.out)
    optimizer = build_optimizer(model, args)
    if checkpoint:
        restore(model, optimizer, checkpoint, args)
    data = load_data(args, device)
    if checkpoint:
        set_rng_state(checkpoint["rng"], device)
        write_metrics(out / "metrics.jsonl", checkpoint["history"], checkpoint["epoch"])
    else:
        model.start_at_mean_image(data.train.mean(0))
    server = None if args.no_visdom else args.visdom_server
    viewer = Viewer(
        out,
        server,
        args.visdom_port,
        args.visdom_env,
        args.visdom_timeout,
        args.visdom_retry,
        args.visdom_log,
    )
    threads = ThreadTuner.for_run(args.threads, device, announce=tqdm.write)
    history = checkpoint["history"] if checkpoint else []
    span = checkpoint["lr_schedule"] if checkpoint else {"start": 0, "end": args.epochs}
    return Run(args, model, optimizer, data, device, threads, viewer, history, span)


def run_training(args: Namespace, checkpoint: dict | None, device: torch.device) -> int:
    """Train a new run or resume one; Ctrl-C keeps the last finished epoch."""
    run, out = start_run(args, checkpoint, device), Path(args.out)
    (out / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    print(f"{describe(args, run.data, device, len(run.history))}; {run.threads.describe()}")
    try:
        with ctrl_c_remembered():
            train_epochs(run)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {interrupted_note(out, run.history)}")
        return 130
    except NonFiniteLoss as error:
        kept = f"{out / 'checkpoint.pt'} keeps epoch {len(run.history)}"
        kept = kept if run.history else "no checkpoint was written"
        print(
            f"error: {error}; {kept}. Try a smaller --lr (now {args.lr}) or --batch-size",
            file=sys.stderr,
        )
        return 1
    if args.eval_k:
        row = log_likelihood(run.model, run.data.test, args, args.eval_k, len(run.history))
        append_metrics(out / "metrics.jsonl", row)
    online = f"http://localhost:{args.visdom_port} (env {args.visdom_env})"
    print(
        f"done: test loss {run.history[-1]['test_loss']:.2f} per image after "
        f"{flags.plural(len(run.history), 'epoch')}; run folder {out}; "
        f"look at {online if run.viewer.online else f'{out}/*.png'}; "
        f"metrics in {out / 'metrics.jsonl'}"
    )
    return 0


def interrupted_note(out: Path, history: list[dict]) -> str:
    if not history:
        return "nothing was saved yet (the first epoch had not finished)"
    return (
        f"{out / 'checkpoint.pt'} holds epoch {len(history)}. "
        f"Resume with: {flags.main_command()} --resume {out / 'checkpoint.pt'}"
    )


def main(argv: list[str]) -> int:
    flush_denormals()
    args, checkpoint, new_folder = settings(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # training sets it through threads.ThreadTuner
    torch.manual_seed(args.seed)
    mode = run_generation if args.generate else run_evaluation if args.evaluate else run_training
    try:
        return mode(args, checkpoint, device)
    except (DataError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, DataError) else 2
    except KeyboardInterrupt:  # before training began (the loop says more when it is stopped)
        print("\ninterrupted before the first epoch; nothing was saved")
        return 130
    finally:  # a run that failed before writing anything leaves no folder behind
        out = Path(args.out)
        if new_folder and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
