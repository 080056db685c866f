"""The lines a run prints: its first line, one per epoch, the last, and the one a failure ends with.

Every command printed (how to resume, how to start a server) names the interpreter that runs it
and quotes what a shell would split, so that it works as printed (commands.main_command).
"""

import shlex
from argparse import Namespace
from pathlib import Path

from helpers.commands import main_command
from helpers.runfiles import NonFiniteLoss, WriteError
from vae import GAUSSIAN_LOG_NORMALIZER

LARGE_BETA = 1e6  # above it a non-finite loss is blamed on --beta, not on --lr


def plural(n: int, word: str) -> str:
    """ "1 epoch", "2 epochs": for the messages of main.py, threads.py and the benchmark."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe(args: Namespace, n_train: int, n_test: int, device, epoch: int) -> str:
    """The run's first line: where, what data, which model, which settings."""
    sizes = "-".join(map(str, [784, *args.hidden, args.latent_dim]))
    activation = args.activation
    if args.decoder_activation not in (None, args.activation):
        activation += f"/{args.decoder_activation} (encoder/decoder)"
    return (
        f"run {args.out}: {args.dataset} ({n_train} train, {n_test} test "
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
        "DReG gradients": args.dreg,
        "bf16 autocast": args.amp is True,
        f"−log p(x) k={args.watch_k} every {args.watch_every} epochs": args.watch_every,
    }
    return "".join(f", {option}" for option, shown in options.items() if shown)


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


def done_line(args: Namespace, history: list[dict], online: bool) -> str:
    """The line a finished run ends with: its test loss and where to look."""
    out = Path(args.out)
    shown = f"http://localhost:{args.visdom_port} (env {args.visdom_env})" if online else None
    return (
        f"done: test loss {history[-1]['test_loss']:.2f} per image after "
        f"{plural(len(history), 'epoch')}; run folder {out}; "
        f"look at {shown or f'{out}/*.png'}; metrics in {out / 'metrics.jsonl'}"
    )


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


def go_on(args: Namespace, checkpoint: Path, epochs: int) -> str:
    """How to go on from a checkpoint of `epochs` epochs: resume it; or, when it has all of
    --epochs, run the --eval-k estimate that was left, or write the last pictures."""
    path = shlex.quote(str(checkpoint))
    if epochs < args.epochs:
        return f"resume with: {main_command()} --resume {path}"
    if args.eval_k:
        return f"estimate log p(x) with: {main_command()} --evaluate {path} --eval-k {args.eval_k}"
    return f"write its pictures with: {main_command()} --generate {path}"


def saved_so_far(out: Path, epochs: int, args: Namespace) -> str:
    """What the run folder keeps, and how to go on from it."""
    if not epochs:
        return "nothing was saved yet (the first epoch had not finished)"
    checkpoint = out / "checkpoint.pt"
    how = go_on(args, checkpoint, epochs)
    if epochs >= args.epochs:
        return f"{checkpoint} holds epoch {epochs}, the last; {how}"
    return f"{checkpoint} holds epoch {epochs}. {how[:1].upper()}{how[1:]}"  # "Resume with: …"


def interrupted(args: Namespace, folder, by: str = "Ctrl-C") -> str:
    """The line a Ctrl-C (or SIGTERM, SIGHUP: `by`) ends a run with, by mode: what it stopped,
    what it wrote, how to go on."""
    stopped = "interrupted" if by == "Ctrl-C" else f"interrupted ({by})"
    if args.evaluate:
        return (
            f"{stopped}: the evaluation of {args.evaluate} did not finish; it wrote nothing "
            f"(the checkpoint and {folder.out / 'metrics.jsonl'} are as they were)"
        )
    if args.generate:
        return (
            f"{stopped}: the generation of {args.generate}'s pictures did not finish; the PNGs "
            f"in {folder.out} may be missing or from before (the checkpoint is unchanged). "
            f"Write them all with: {main_command()} --generate {shlex.quote(args.generate)}"
        )
    return f"{stopped}; {saved_so_far(folder.out, folder.saved_epochs, args)}"


def failure(error: Exception, args: Namespace, folder) -> str:
    """The one line a failed run ends with: what failed, what is kept, what to try."""
    epochs, checkpoint = folder.saved_epochs, folder.out / "checkpoint.pt"
    if isinstance(error, WriteError):
        if not epochs:
            return f"{error}; no checkpoint was written: free some space or choose another --out"
        return (
            f"{error}; {checkpoint} of epoch {epochs} is intact. Free some space, then "
            f"{go_on(args, checkpoint, epochs)}"
        )
    if not isinstance(error, NonFiniteLoss):
        return str(error)
    kept = f"{checkpoint} keeps epoch {epochs}" if epochs else "no checkpoint was written"
    if args.beta > LARGE_BETA:  # β·KL alone overflows: the step size is not the cause
        return f"{error}; {kept}. Try a smaller --beta (now {args.beta})"
    return f"{error}; {kept}. Try a smaller --lr (now {args.lr}) or --batch-size"
