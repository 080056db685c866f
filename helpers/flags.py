"""Every flag of main.py in one place, with its default and its help; the commands printed back.

Nothing here imports torch, so `--help` and a mistyped flag answer at once.
"""

import argparse
import math
import os
import urllib.parse

from helpers.commands import main_command

# The names main.py offers, here without torch so that --help answers before it loads;
# vae.ACTIVATIONS and data.DATASETS map them to torch's classes (a test checks that they agree).
ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "softplus", "leaky_relu")
LIKELIHOODS = ("gaussian", "bernoulli")
DATASETS = ("mnist", "fashion-mnist", "kmnist")
# Flags that fix the model and its data: a checkpoint must agree with them.
MODEL_FLAGS = (
    "dataset",
    "hidden",
    "latent_dim",
    "activation",
    "decoder_activation",
    "likelihood",
    "binarize",
)
# Flags of one invocation that a checkpoint never supplies.
MODE_FLAGS = ("resume", "evaluate", "generate", "eval_k", "out")
# Where and how a run computes: each invocation sets these (or their defaults), never the
# checkpoint, so that a run trained on a GPU box evaluates or resumes on a laptop.
INVOCATION_FLAGS = ("device", "threads", "compile", "amp")
# Flags that, given to --resume, start a new learning-rate schedule at the checkpoint's epoch.
SCHEDULE_FLAGS = ("lr", "lr_schedule", "lr_floor", "warmup_epochs")
LR_SCHEDULES = ("constant", "cosine", "exponential", "burda")
OBJECTIVES = ("elbo", "iwae")
AMP_MIN_WIDTH = 200  # --amp auto: narrower layers gain nothing from bf16 (docs/speed.md)


def positive(kind: type, allow_zero: bool = False):
    """argparse type: a finite number of `kind` above 0 (or at least 0, with allow_zero)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not math.isfinite(value) or not (value >= 0 if allow_zero else value > 0):
            bound = "at least" if allow_zero else "greater than"
            raise argparse.ArgumentTypeError(f"must be {bound} 0, got {text}")
        return value

    return parse


def fraction(text: str) -> float:
    """argparse type: a number above 0 and at most 1."""
    value = positive(float)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be at most 1, got {text}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    value = positive(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {text}")
    return value


def seed(text: str) -> int:
    """argparse type: an integer torch takes as a seed, -2^63 to 2^64 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if not -(2**63) <= value < 2**64:
        raise argparse.ArgumentTypeError(f"a seed is -2^63 to 2^64-1, got {text}")
    return value


def threads(text: str) -> int:
    """argparse type: CPU threads, 1 to the CPUs this process may use (more only slow it down)."""
    value = positive(int)(text)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if value > (cpus or 1):
        raise argparse.ArgumentTypeError(
            f"this machine lets the run use {cpus} CPUs: give 1 to {cpus}, got {text}"
        )
    return value


def server_address(text: str) -> str:
    """argparse type: a Visdom server's address, scheme and host only, such as http://localhost
    (the client appends :port itself)."""
    parts = urllib.parse.urlsplit(text)
    try:
        has_port = parts.port is not None
    except ValueError:
        has_port = True
    extra = has_port or parts.path or parts.query or parts.fragment
    if parts.scheme not in ("http", "https") or not parts.hostname or extra:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address such as http://localhost or https://host.example "
            "(scheme and host only; the port goes in --visdom-port)"
        )
    return text


def hidden_sizes(text: str) -> list[int]:
    """argparse type: comma-separated layer widths such as 256,64."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        message = f"{text!r} is not a comma-separated list of widths such as 256,64"
        raise argparse.ArgumentTypeError(message) from None
    if not all(size > 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"widths must be greater than 0, got {text}")
    return sizes


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is long; --help prints it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {main_command()} --help)\n")


def build_parser() -> Parser:
    p = Parser(prog="main.py", description="Train a VAE on MNIST and watch it in Visdom.")

    tutorial = p.add_argument_group("training: the tutorial's settings")
    tutorial.add_argument("--epochs", type=positive(int), default=20, help="total epochs to train")
    tutorial.add_argument("--batch-size", type=positive(int), default=100, help="images per step")
    tutorial.add_argument("--lr", type=positive(float), default=2e-3, help="Adam learning rate")
    tutorial.add_argument(
        "--beta", type=positive(float, allow_zero=True), default=1.0, help="weight of the KL term"
    )
    tutorial.add_argument("--latent-dim", type=positive(int), default=10, help="latent dimensions")
    tutorial.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed for everything random (the binarized test set has a fixed seed of its own)",
    )
    tutorial.add_argument(
        "--data-dir",
        default="./data",
        help="folder holding <Dataset>/raw/; with a checkpoint, its folder if that holds the "
        "dataset here, else this default",
    )

    visdom = p.add_argument_group("Visdom")
    visdom.add_argument("--no-visdom", action="store_true", help="contact no server; PNGs only")
    visdom.add_argument(
        "--visdom",
        dest="no_visdom",
        action="store_false",
        default=False,
        help="contact the server after all: to --resume a --no-visdom run and watch it",
    )
    visdom.add_argument(
        "--visdom-server", type=server_address, default="http://localhost", help="server address"
    )
    visdom.add_argument("--visdom-port", type=port, default=8097, help="server port")
    visdom.add_argument("--visdom-env", default="main", help="environment; the page opens on main")
    visdom.add_argument(
        "--visdom-timeout",
        type=positive(float),
        default=2.0,
        help="seconds before a request gives up",
    )
    visdom.add_argument(
        "--visdom-retry",
        type=positive(float, allow_zero=True),
        default=30.0,
        help="seconds before a lost server is tried again, at an epoch's end",
    )
    visdom.add_argument(
        "--visdom-log",
        metavar="FILE",
        help="also write every Visdom message to FILE, to replay later",
    )

    run = p.add_argument_group("run: a new one, or one of the three modes on a checkpoint")
    run.add_argument(
        "--out",
        help="run folder for checkpoint, metrics and PNGs "
        "(default: runs/<timestamp>, or the checkpoint's folder)",
    )
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint")
    mode.add_argument(
        "--evaluate",
        metavar="CHECKPOINT",
        help="no training: test loss and log-likelihood (k from --eval-k: 5000)",
    )
    mode.add_argument(
        "--generate",
        metavar="CHECKPOINT",
        help="no training: write the samples and latent views as PNGs",
    )
    run.add_argument("--num-images", type=positive(int), default=64, help="images in each grid")

    model = p.add_argument_group("model and data")
    model.add_argument(
        "--hidden",
        type=hidden_sizes,
        default=[256, 64],
        help="encoder widths; the decoder mirrors them (default: 256,64)",
    )
    model.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        default="gaussian",
        help="gaussian: squared error + KL (the design); bernoulli: cross-entropy from logits",
    )
    model.add_argument("--dataset", choices=DATASETS, default="mnist", help="torchvision dataset")

    speed = p.add_argument_group("device and speed (set by each invocation, never by a checkpoint)")
    speed.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default="auto",
        help="auto: CUDA, then MPS, then CPU",
    )
    speed.add_argument(
        "--threads",
        type=threads,
        help="CPU threads for torch, at most the CPUs the run may use (default: chosen while "
        "training by measuring steps: see docs/speed.md); a fixed count makes runs of one seed "
        "identical to the bit",
    )
    speed.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model with its loss: seconds to compile, faster steps",
    )
    speed.add_argument(
        "--amp",
        nargs="?",
        const="on",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast for the training step's forward pass; auto: on where torch reports "
        f"native bf16 (CUDA, or a CPU with bf16 units) and every hidden layer has at least "
        f"{AMP_MIN_WIDTH} units, where it pays (docs/speed.md); --amp alone: on",
    )
    speed.add_argument(
        "--no-amp",
        dest="amp",
        action="store_const",
        const="off",
        default=argparse.SUPPRESS,
        help="float32 throughout (as --amp off)",
    )

    research = p.add_argument_group("research options (docs/results.md)")
    research.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="elbo",
        help="elbo: reconstruction + analytic KL; iwae: the importance-weighted "
        "bound with --train-k samples (Burda et al. 2015), costlier per step",
    )
    research.add_argument(
        "--train-k",
        type=positive(int),
        default=5,
        help="importance samples per image for --objective iwae",
    )
    research.add_argument(
        "--stl",
        action="store_true",
        help="sticking the landing (Roeder et al. 2017): the encoder's gradient "
        "without log q's score term; the ELBO then uses a one-sample KL",
    )
    research.add_argument(
        "--dreg",
        action="store_true",
        help="for --objective iwae: doubly reparameterized gradients (Tucker et al. 2018), the "
        "encoder's without the score term and weighted by the squared importance weights",
    )
    research.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="constant",
        help="lr at each step: constant; cosine or exponential from --lr down to "
        "--lr·--lr-floor at the last epoch; burda: --lr·10^(-i/7) for 3^i epochs, "
        "i = 0..7 (Burda et al. 2015). --resume keeps the schedule; giving one of "
        "--lr, --lr-schedule, --lr-floor, --warmup-epochs starts a new one there",
    )
    research.add_argument(
        "--lr-floor",
        type=fraction,
        default=0.01,
        help="the decayed lr at the end, as a fraction of --lr",
    )
    research.add_argument(
        "--warmup-epochs",
        type=positive(float, allow_zero=True),
        default=0.0,
        help="lr rises linearly from 0 over these (fractional) epochs first; 0: none",
    )
    research.add_argument(
        "--adam-eps",
        type=positive(float),
        default=1e-8,
        help="Adam's epsilon (1e-4 steadies long runs)",
    )
    research.add_argument(
        "--clip-grad",
        type=positive(float),
        metavar="NORM",
        help="clip the gradient's total norm to NORM (default: no clipping)",
    )
    research.add_argument(
        "--activation", choices=ACTIVATIONS, default="relu", help="hidden activation"
    )
    research.add_argument(
        "--decoder-activation",
        choices=ACTIVATIONS,
        help="the decoder's hidden activation (default: --activation's)",
    )
    research.add_argument(
        "--binarize",
        choices=("none", "dynamic", "static"),
        default="none",
        help="pixels ~ Bernoulli(intensity) at each use (dynamic) or once (static); "
        "the test set once, with a fixed seed (static draws: on the CPU, the same on any device)",
    )
    research.add_argument(
        "--watch-every",
        type=positive(int, allow_zero=True),
        default=0,
        metavar="N",
        help="every N epochs, estimate −log p(x) on a fixed test subset "
        "into metrics.jsonl (watch_nll) and the Visdom loss pane; "
        "0: never",
    )
    research.add_argument(
        "--watch-k", type=positive(int), default=100, help="importance samples for that estimate"
    )
    research.add_argument(
        "--watch-images",
        type=positive(int),
        default=1000,
        help="the first this many test images make its subset",
    )
    research.add_argument(
        "--eval-k",
        type=positive(int),
        help="importance samples for a log-likelihood estimate after training (default: "
        "none; --evaluate: 5000)",
    )
    for action in p._actions:  # every help ends with its default (0 too, unlike False: `is`)
        unset = any(action.default is value for value in (None, False, argparse.SUPPRESS))
        if not unset and action.dest != "hidden":
            action.help += " (default: %(default)s)"
        if action.dest in MODEL_FLAGS:
            action.help += "; a checkpoint keeps it"
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def given(argv: list[str]) -> set[str]:
    """The destinations of the flags given on the command line (not left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def check(args: argparse.Namespace) -> None:
    """Fail as for a bad flag on combinations that make no sense (after a checkpoint's merge)."""
    if (args.objective == "iwae" or args.stl) and args.beta != 1:
        fail(f"--objective iwae and --stl bound log p(x) only with --beta 1, got {args.beta}")
    if args.dreg and args.objective != "iwae":
        fail("--dreg is a gradient of the IWAE bound: give it with --objective iwae")
    if args.warmup_epochs >= args.epochs:
        fail(f"--warmup-epochs {args.warmup_epochs} must be below --epochs {args.epochs}")
    training = not (args.evaluate or args.generate)  # the modes without training send nothing
    if training and args.visdom_log and (why := cannot_append(args.visdom_log)):
        fail(f"--visdom-log {args.visdom_log} cannot be written ({why}): choose another file")


def cannot_append(path: str) -> str | None:
    """Why this process cannot append to the file `path`, or None if it can (a file that was
    absent is created to try, then removed)."""
    existed = os.path.lexists(path)
    try:
        with open(path, "a"):
            pass
        if not existed:
            os.remove(path)
    except OSError as error:
        return error.strerror or str(error)
    return None


def fail(message: str):
    """Stop as argparse does for a bad flag: one line, exit 2."""
    build_parser().error(message)
