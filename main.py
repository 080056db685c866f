"""Train the VAE on MNIST and watch test images and their reconstructions in Visdom.

    python -m visdom.server -bind_local    # one terminal (optional: without it, PNGs in the run folder)
    python main.py                         # another; then open http://localhost:8097
"""

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import CheckpointError, append_metrics, load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_metrics
from data import DATASETS, TEST_BINARIZATION_SEED, DataError, load_images, to_pixels
from threads import ThreadTuner
from vae import ACTIVATIONS, GAUSSIAN_VARIANCE, LIKELIHOODS, VAE, importance_weighted_log_likelihood, kl_divergence, negative_elbo, reconstruction_loss, reparameterize
from viewer import Viewer, figures, save_pngs

# Flags that fix the model and its data: a checkpoint must agree with them.
MODEL_FLAGS = ("dataset", "hidden", "latent_dim", "activation", "likelihood", "binarize")
# Keys of metrics.jsonl that depend on the machine and its load, not on the seed.
TIMING_KEYS = ("epoch_seconds", "eval_seconds", "elapsed_seconds", "train_images_per_second",
               "threads")


def positive(kind, allow_zero: bool = False):
    """argparse type: a finite number of `kind` greater than zero (or not below it, with allow_zero)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (value >= 0 if allow_zero else value > 0) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {'at least' if allow_zero else 'greater than'} 0, got {text}")
        return value
    return parse


def hidden_sizes(text: str) -> list[int]:
    """argparse type: comma-separated layer widths such as 256,64."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths such as 256,64") from None
    if not all(size > 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"widths must be greater than 0, got {text}")
    return sizes


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is 30 lines long; --help prints it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see python main.py --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="main.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--epochs", type=positive(int), default=20, help="total epochs to train (default: %(default)s)")
    a("--batch-size", type=positive(int), default=100, help="images per step (default: %(default)s)")
    a("--lr", type=positive(float), default=2e-3, help="Adam learning rate (default: %(default)s)")
    a("--latent-dim", type=positive(int), default=10, help="latent dimensions (default: %(default)s)")
    a("--hidden", type=hidden_sizes, default=[256, 64], help="encoder widths, decoder mirrors them (default: 256,64)")
    a("--activation", choices=sorted(ACTIVATIONS), default="relu", help="hidden activation (default: %(default)s)")
    a("--likelihood", choices=LIKELIHOODS, default="gaussian",
      help="gaussian: squared error + KL (the design); bernoulli: cross-entropy from logits (default: %(default)s)")
    a("--binarize", choices=("none", "dynamic", "static"), default="none",
      help="pixels ~ Bernoulli(intensity): each use (dynamic) or once (static); test set once, fixed seed (default: %(default)s)")
    a("--dataset", choices=sorted(DATASETS), default="mnist", help="torchvision dataset (default: %(default)s)")
    a("--beta", type=positive(float, allow_zero=True), default=1.0, help="weight of the KL term (default: %(default)s)")
    a("--seed", type=int, default=0, help="seed for everything random (default: %(default)s)")
    a("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="auto: CUDA, then MPS, then CPU (default: %(default)s)")
    a("--threads", type=positive(int), default=None,
      help="CPU threads for torch (default: auto, measured while training: see docs/speed.md)")
    a("--compile", action="store_true", help="torch.compile the model with its loss: seconds to compile, faster steps (see README)")
    a("--amp", action="store_true", help="bf16 autocast for the forward pass (CUDA, or a CPU with bf16 units)")
    a("--data-dir", default="./data", help="folder holding <Dataset>/raw/ (default: %(default)s)")
    a("--out", default=None, help="run folder for checkpoint, metrics and PNGs (default: runs/<timestamp>)")
    a("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint.pt")
    a("--evaluate", metavar="CHECKPOINT", help="no training: evaluate a checkpoint on the test set (with --eval-k)")
    a("--generate", metavar="CHECKPOINT", help="no training: write samples and latent views of a checkpoint as PNGs")
    a("--eval-k", type=positive(int), default=None,
      help="importance samples for the log-likelihood estimate after training (with --evaluate: default 5000)")
    a("--num-images", type=positive(int), default=64, help="images in each grid (default: %(default)s)")
    a("--no-visdom", action="store_true", help="do not contact a Visdom server; PNGs only")
    a("--visdom-server", default="http://localhost", help="Visdom server address (default: %(default)s)")
    a("--visdom-port", type=positive(int), default=8097, help="Visdom server port (default: %(default)s)")
    a("--visdom-env", default="main", help="Visdom environment, the page opens on main (default: %(default)s)")
    a("--visdom-timeout", type=positive(float), default=2.0, help="seconds before a Visdom request gives up (default: %(default)s)")
    a("--visdom-retry", type=positive(float, allow_zero=True), default=30.0, help="seconds before a lost server is tried again, at an epoch's end (default: %(default)s)")
    a("--visdom-log", metavar="FILE", help="also write every Visdom message to FILE, to replay later (see README)")
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags given on the command line (not left at their defaults)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def flush_denormals() -> None:
    """Treat floats below 1.2e-38 as zero on the CPU, which otherwise does arithmetic on them slowly.

    Adam's second moments for pixels the decoder has learnt to switch off sink into that range, and
    slowed its step down. Call this before torch's first parallel work: its worker
    threads copy the setting from the main thread when they start, and never read it again.
    """
    torch.set_flush_denormal(True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


def settings(argv: list[str]) -> tuple[argparse.Namespace, dict | None]:
    """Parse and check the flags before any work starts; with a checkpoint, merge its settings."""
    parser = build_parser()
    args = parser.parse_args(argv)
    source = args.resume or args.evaluate or args.generate
    if sum(bool(x) for x in (args.resume, args.evaluate, args.generate)) > 1:
        parser.error("give only one of --resume, --evaluate and --generate")
    checkpoint = None
    if source:
        try:
            checkpoint = load_checkpoint(source)
        except CheckpointError as error:
            parser.error(str(error))
        given = explicit_flags(build_parser(), argv)
        saved = checkpoint["args"]
        for flag in MODEL_FLAGS:
            if flag in given and getattr(args, flag) != saved[flag]:
                parser.error(f"the checkpoint has {flag} {saved[flag]}, the flags say {getattr(args, flag)}: "
                             f"drop --{flag.replace('_', '-')} to continue it, or start a new run")
        for key, value in saved.items():
            if key not in given and key not in ("resume", "evaluate", "generate", "eval_k", "out"):
                setattr(args, key, value)
        if args.out is None:
            args.out = str(Path(source).parent)
        if args.resume and args.epochs <= checkpoint["epoch"]:
            parser.error(f"the checkpoint has finished {checkpoint['epoch']} epochs already: "
                         f"pass --epochs N with N > {checkpoint['epoch']} to train further")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch finds no CUDA device here; use --device auto or cpu")
    if args.device == "mps" and not torch.backends.mps.is_available():
        parser.error("--device mps: torch finds no MPS device here; use --device auto or cpu")
    if args.out is None:
        args.out = f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}"
    out = Path(args.out)
    if not source and (out / "checkpoint.pt").exists():
        parser.error(f"{out} already holds a run: continue it with --resume {out / 'checkpoint.pt'}, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        parser.error(f"--out {out} cannot be written ({error.strerror}): choose another folder")
    return args, checkpoint


class NonFiniteLoss(Exception):
    pass


def batch_loss(model: VAE, x: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """The training objective of one batch, the negative ELBO; under --amp the forward pass runs in bf16.

    With --compile this whole function is compiled, the loss with the model, so that its backward
    pass is compiled too: compiling the model alone leaves the loss's many small operations eager.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
        logits, mu, logvar = model(x)
    return negative_elbo(logits.float(), x, mu.float(), logvar.float(), args.beta, args.likelihood)[0]


def build_model(args: argparse.Namespace, device: torch.device) -> VAE:
    """The VAE the flags describe, on `device` (seed torch first for a repeatable start)."""
    return VAE(784, tuple(args.hidden), args.latent_dim, args.activation).to(device)


def build_optimizer(model: VAE, args: argparse.Namespace) -> torch.optim.Adam:
    """Adam with the fused kernel: one operation for the whole update of all parameters."""
    return torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)


def loss_function(args: argparse.Namespace):
    """batch_loss, compiled under --compile: what train_epoch calls each step."""
    return torch.compile(batch_loss) if args.compile else batch_loss


def train_epoch(model, loss_fn, optimizer, pixels, args, epoch: int, device: torch.device,
                threads: ThreadTuner) -> float:
    """One pass over the shuffled training set with `loss_fn` (from loss_function); returns the mean
    loss per image. `threads` times the steps and sets the CPU thread count (threads.py).

    No host sync per step: each step's loss goes into a tensor on the device, which the host
    reads every `report_every` steps for the progress bar and the check for a non-finite loss.
    """
    model.train()
    n = pixels.shape[0]
    order = torch.randperm(n, device=device)
    steps = math.ceil(n / args.batch_size)
    losses = torch.empty(steps, device=device)
    report_every, checked = 50, 0
    threads.begin_epoch()
    with tqdm(total=steps, desc=f"epoch {epoch}", unit="step", disable=None, leave=False) as bar:
        for step in range(steps):
            x = pixels[order[step * args.batch_size : (step + 1) * args.batch_size]]
            if args.binarize == "dynamic":
                x = torch.bernoulli(x)
            loss = loss_fn(model, x, args)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
            threads.step()
            if (step + 1) % report_every == 0 or step + 1 == steps:
                recent = losses[checked : step + 1]
                finite = torch.isfinite(recent)
                if not finite.all():
                    first = checked + int((~finite).nonzero()[0])
                    raise NonFiniteLoss(f"the loss became non-finite at epoch {epoch}, step {first + 1} of {steps}")
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
def log_likelihood(model, pixels, args, k: int, epoch: int) -> dict:
    """Importance-weighted log p(x) with k samples, averaged over the split, with a progress bar."""
    model.eval()
    generator = torch.Generator(device=pixels.device).manual_seed(args.seed)
    batch, total, start = 100, 0.0, time.perf_counter()
    for x in tqdm(pixels.split(batch), desc=f"log-likelihood, k={k}", unit="batch", mininterval=5):
        total += importance_weighted_log_likelihood(model, x, k, args.likelihood, chunk=max(1, 50_000 // batch),
                                                    generator=generator).sum().item()
    mean = total / pixels.shape[0]
    density = ("bernoulli pixels: a probability" if args.likelihood == "bernoulli" else
               f"gaussian pixels with variance {GAUSSIAN_VARIANCE} around the decoder's mean: a density over [0,1]^784")
    print(f"test log-likelihood (importance-weighted, k={k}, epoch {epoch}): {mean:.2f} nats per image; "
          f"negative: {-mean:.2f}; model: {density}")
    return {"evaluation": "importance-weighted", "epoch": epoch, "k": k, "test_log_likelihood": mean,
            "test_nll": -mean, "likelihood": args.likelihood,
            "decoder_variance": GAUSSIAN_VARIANCE if args.likelihood == "gaussian" else None,
            "eval_seconds": time.perf_counter() - start}


def main(argv: list[str]) -> int:
    flush_denormals()
    args, checkpoint = settings(argv)
    device = pick_device(args.device)
    threads = ThreadTuner.for_run(args.threads, device, announce=tqdm.write)
    out = Path(args.out)
    torch.manual_seed(args.seed)

    model = build_model(args, device)
    optimizer = build_optimizer(model, args)
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            print(f"error: the checkpoint does not fit this model ({str(error).splitlines()[0]}): "
                  "start a new run or give the flags it was made with", file=sys.stderr)
            return 2
        for group in optimizer.param_groups:
            group["lr"] = args.lr
    try:
        test = to_pixels(load_images(args.dataset, args.data_dir, train=False), device,
                         "none" if args.binarize == "none" else "static", seed=TEST_BINARIZATION_SEED)
        train = None
        if not (args.evaluate or args.generate):
            train = to_pixels(load_images(args.dataset, args.data_dir, train=True), device, args.binarize, seed=args.seed)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if checkpoint is None:
        model.start_at_mean_image(train.mean(0))

    fixed_images = test[: args.num_images]
    fixed_z = torch.randn(args.num_images, args.latent_dim, generator=torch.Generator().manual_seed(args.seed)).to(device)
    nrow = max(1, round(math.sqrt(args.num_images)))
    epoch = checkpoint["epoch"] if checkpoint else 0
    history = checkpoint["history"] if checkpoint else []
    metrics_path = out / "metrics.jsonl"

    if args.generate:
        shown = figures(model.eval(), fixed_images, fixed_z, epoch, nrow)
        save_pngs(out, shown)
        print(f"wrote {', '.join(name + '.png' for name in shown)} to {out}")
        return 0
    if args.evaluate:
        elbo = evaluate(model, test, args)
        print(f"test loss {elbo['test_loss']:.2f} per image (reconstruction {elbo['test_recon']:.2f} + KL {elbo['test_kl']:.2f})")
        append_metrics(metrics_path, {**log_likelihood(model, test, args, args.eval_k or 5000, epoch), **elbo})
        return 0

    server = None if args.no_visdom else args.visdom_server
    viewer = Viewer(out, server, args.visdom_port, args.visdom_env, args.visdom_timeout, args.visdom_retry, args.visdom_log)
    loss_fn = loss_function(args)
    if checkpoint:
        set_rng_state(checkpoint["rng"], device)
        write_metrics(metrics_path, history, epoch)
    (out / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    checkpoint_path = out / "checkpoint.pt"
    hidden = "-".join(map(str, [784, *args.hidden, args.latent_dim]))
    print(f"run {out}: {args.dataset} ({train.shape[0]} train, {test.shape[0]} test images) on {device}, "
          f"VAE {hidden} {args.activation}, {args.likelihood} likelihood, binarize {args.binarize}, beta {args.beta}, "
          f"epochs {epoch + 1}..{args.epochs}, batch {args.batch_size}, lr {args.lr}, seed {args.seed}"
          f"; {threads.describe()}")

    saved_epoch = epoch
    start = time.perf_counter() - (history[-1]["elapsed_seconds"] if history else 0.0)
    try:
        while epoch < args.epochs:
            epoch += 1
            tick = time.perf_counter()
            train_loss = train_epoch(model, loss_fn, optimizer, train, args, epoch, device, threads)
            train_seconds = time.perf_counter() - tick
            row = {"epoch": epoch, "train_loss": train_loss, **evaluate(model, test, args)}
            row.update(epoch_seconds=train_seconds, eval_seconds=time.perf_counter() - tick - train_seconds,
                       elapsed_seconds=time.perf_counter() - start,
                       train_images_per_second=train.shape[0] / train_seconds,
                       threads=threads.epoch_threads())
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                raise NonFiniteLoss(f"the weights became non-finite in epoch {epoch}")
            history.append(row)
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "args": vars(args), "rng": rng_state(device), "history": history,
            })
            saved_epoch = epoch
            append_metrics(metrics_path, row)
            print(f"epoch {epoch}/{args.epochs}: train {train_loss:.2f}, test {row['test_loss']:.2f} "
                  f"(reconstruction {row['test_recon']:.2f} + KL {row['test_kl']:.2f}) per image, "
                  f"{train_seconds:.1f}s, {row['train_images_per_second']:,.0f} images/s")
            viewer.show(figures(model.eval(), fixed_images, fixed_z, epoch, nrow), history)
    except KeyboardInterrupt:
        if saved_epoch:
            print(f"\ninterrupted in epoch {epoch}; {checkpoint_path} holds epoch {saved_epoch}. "
                  f"Resume with: python main.py --resume {checkpoint_path}")
        else:
            print("\ninterrupted in the first epoch; nothing was saved yet")
        return 130
    except NonFiniteLoss as error:
        kept = f"{checkpoint_path} keeps epoch {saved_epoch}" if saved_epoch else "no checkpoint was written"
        print(f"error: {error}; {kept}. Try a smaller --lr (now {args.lr}) or --batch-size", file=sys.stderr)
        return 1

    if args.eval_k:
        append_metrics(metrics_path, log_likelihood(model, test, args, args.eval_k, epoch))
    look = f"http://localhost:{args.visdom_port} (env {args.visdom_env})" if viewer.online else f"{out}/*.png"
    print(f"done: test loss {history[-1]['test_loss']:.2f} per image after {epoch} epochs; run folder {out}; "
          f"look at {look}; metrics in {metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
