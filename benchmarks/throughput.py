"""Training throughput of main.py's loop against the common DataLoader pipeline, on an idle and on
a busy CPU, with a FLOP bound and the time to quality.

    python benchmarks/throughput.py --data-dir DIR    # DIR holds MNIST/raw
    python benchmarks/throughput.py --quick           # seconds, small synthetic data: does it run?
    python benchmarks/throughput.py --gpu --data-dir DIR    # the loop on CUDA instead (gpu_section)

(a) the project's loop (main.train_epoch: the split held as one tensor on the device, shuffled by
index, the thread count chosen by threads.py's policy), with main.py's defaults or the given
--flags; (b) the common pipeline: torchvision MNIST with transforms.ToTensor() through a shuffling
DataLoader, the same model, optimizer and batch size, at torch's default thread count, eager and
in float32 whatever --flags say. Images per second over whole epochs after a warm-up, in each of
these conditions (a row each, per batch size):

- idle, with the thread policy main.py uses (auto, unless --flags give --threads);
- idle, with --threads fixed at torch's default count: the loop as it ran before the policy;
- one core busy: a `while True: pass` process that this script starts, pins to the last core (so
  the condition is the same every time) and stops; it also ends itself after --busy-limit seconds;
- two runs side by side: two worker processes of this script warm up, then start their timed
  epochs together; their images per second together are all their images over the wall time from
  the first start to the last end.

Real MNIST when --data-dir has it, otherwise synthetic data of MNIST's size.
"""

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import main
from helpers import flags, likelihood, messages, models, research, startup
from helpers.batches import EpochBatches
from helpers.checkpoint import read_metrics
from helpers.data import idx_bytes, load_images, raw_folder, to_pixels
from helpers.threads import ThreadTuner
from vae import VAE, negative_elbo

DEFAULT_THREADS = torch.get_num_threads()  # torch's choice, before anything changes it
LOOPS = ("project", "dataloader")


def synthetic_mnist(root: Path, n_train: int = 60_000, n_test: int = 10_000) -> None:
    """Random 28x28 uint8 images and labels in MNIST's IDX files (MNIST's sizes by default)."""
    rng = np.random.default_rng(0)
    folder = raw_folder("mnist", root)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))


def project_args(flags_text: str, device: torch.device) -> argparse.Namespace:
    """The project's settings from --flags, bf16 decided for `device` as main() decides it."""
    args = flags.build_parser().parse_args(shlex.split(flags_text))
    args.amp = research.bf16_pays(args.amp, args.hidden, device)
    return args


def fresh(args: argparse.Namespace, device: torch.device) -> tuple[VAE, torch.optim.Adam]:
    """A new model and optimizer, seeded as main.py seeds a run."""
    torch.manual_seed(args.seed)
    model = models.build_model(args, device)
    return model, models.build_optimizer(model, args)


def epoch_trainer(args, model, optimizer, images, tuner, epochs: int) -> Callable[[int], float]:
    """A function that trains epoch N of `epochs` on `images` as main.py's train() does: its
    loss with the research options, the hooks on Adam's step, the batches; it returns the loss."""
    loss_fn = research.training_loss(args, main.loss_function)
    research.adjust_adam_steps(optimizer, args, {"start": 0, "end": epochs}, len(images), 0)

    def train_epoch(epoch: int) -> float:
        batches = EpochBatches(images, args.batch_size, args.binarize, epoch, tuner)
        return main.train_epoch(model, optimizer, loss_fn, batches)

    return train_epoch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def quiet(line: str) -> None:
    """The benchmark's thread tuners announce nothing: each row reports the counts used."""


def project_loop(
    args, device, pixels, epochs: int, ready: Callable[[], None] = lambda: None
) -> dict:
    """main.train_epoch over `epochs` whole epochs after one warm-up epoch, with the thread policy
    main.py would use for `args` (a tuner of its own, as a run has). `ready` is called between the
    warm-up and the timed epochs. Returns the images, the monotonic start and end of the timed
    epochs, the thread count of each, and the seconds of the warm-up (compiling, with --compile)."""
    model, optimizer = fresh(args, device)
    torch._dynamo.reset()
    tuner = ThreadTuner.for_run(args.threads, device, announce=quiet)
    train_epoch = epoch_trainer(args, model, optimizer, pixels, tuner, epochs + 1)
    start = time.monotonic()
    train_epoch(0)
    sync(device)
    warmup = time.monotonic() - start
    ready()
    start, counts = time.monotonic(), []
    for epoch in range(1, epochs + 1):
        train_epoch(epoch)
        counts.append(tuner.epoch_threads())
    sync(device)
    end = time.monotonic()
    torch.set_num_threads(DEFAULT_THREADS)
    return {
        "images": epochs * pixels.shape[0],
        "start": start,
        "end": end,
        "threads": counts,
        "warmup": warmup,
    }


def dataloader_loop(
    args,
    device,
    root: Path,
    epochs: int,
    limit_seconds: float,
    ready: Callable[[], None] = lambda: None,
    warmup_steps: int = 100,
) -> dict:
    """The usual tutorial loop over `epochs` whole epochs after a warm-up, at torch's default thread
    count, with loss.item() every step; returns what project_loop returns. The warm-up and the
    timed epochs each stop early after `limit_seconds`: on a busy CPU torch's threads collapse,
    and an epoch can take many minutes."""
    torch.set_num_threads(DEFAULT_THREADS)
    model, optimizer = fresh(args, device)
    dataset = datasets.MNIST(str(root), train=True, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)

    def step(x: torch.Tensor) -> float:
        x = x.to(device).view(-1, 784)
        logits, mu, logvar = model(x)
        loss = negative_elbo(logits, x, mu, logvar, args.beta, args.likelihood)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item() * x.shape[0]

    start = time.monotonic()
    for i, (x, _) in enumerate(loader):
        if i == warmup_steps or time.monotonic() - start > limit_seconds:
            break
        step(x)
    ready()
    start, images, total = time.monotonic(), 0, 0.0
    for _ in range(epochs):
        for x, _ in loader:
            total += step(x)
            images += x.shape[0]
            if time.monotonic() - start > limit_seconds:
                break
    assert np.isfinite(total)
    return {"images": images, "start": start, "end": time.monotonic(), "threads": [DEFAULT_THREADS]}


def run_loop(
    loop: str, args, device, root: Path, pixels, options, ready: Callable[[], None] = lambda: None
) -> dict:
    if loop == "project":
        return project_loop(args, device, pixels, options.epochs, ready)
    return dataloader_loop(
        args, device, root, options.dataloader_epochs, options.dataloader_limit, ready
    )


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of the rounds' own ratios (paired: a slow spell hits both)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def together(runs: list[dict]) -> float:
    """Images per second of runs that ran at the same time: all images over their whole span."""
    return sum(r["images"] for r in runs) / (
        max(r["end"] for r in runs) - min(r["start"] for r in runs)
    )


@contextlib.contextmanager
def busy_core(limit_seconds: float) -> Iterator[subprocess.Popen]:
    """Another program keeping one core busy: `while True: pass` in a process pinned to the last
    core, for the duration of the block. Killed when the block is left, however it is left (an
    exception, Ctrl-C); and it ends itself after `limit_seconds` should this process die first."""
    code = (
        f"import time\nend = time.monotonic() + {limit_seconds}\n"
        "while time.monotonic() < end:\n    pass\n"
    )
    hog = subprocess.Popen([sys.executable, "-c", code])
    try:
        if hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(hog.pid, {max(os.sched_getaffinity(0))})
        time.sleep(0.2)  # let it take its core
        yield hog
    finally:
        hog.kill()
        hog.wait()


def side_by_side(jobs: list[tuple[str, int]], options) -> list[dict]:
    """Two worker processes of this script run each (loop, batch) job at the same time: each warms
    up and says so, then both are told to start. Returns, per job, the two runs' results."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        ",".join(f"{loop}:{batch}" for loop, batch in jobs),
        "--data-dir",
        str(options.data_root),
        "--epochs",
        str(options.epochs),
        "--dataloader-epochs",
        str(options.dataloader_epochs),
        "--dataloader-limit",
        str(options.dataloader_limit),
        f"--flags={options.flags}",
    ]
    logs = [tempfile.TemporaryFile() for _ in range(2)]
    workers = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1
        )
        for log in logs
    ]

    def expect(worker: subprocess.Popen, log, prefix: str) -> str:
        for line in worker.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
        log.seek(0)
        raise RuntimeError(f"a side-by-side worker ended early: {log.read().decode()[-2000:]}")

    try:
        results = []
        for _ in jobs:
            for worker, log in zip(workers, logs):
                expect(worker, log, "@ready")
            for worker in workers:
                worker.stdin.write("go\n")
                worker.stdin.flush()
            results.append(
                [json.loads(expect(worker, log, "@result ")) for worker, log in zip(workers, logs)]
            )
        return results
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        for log in logs:
            log.close()


def worker(options) -> None:
    """One of side_by_side's two runs: each job after a warm-up and a `go` on stdin."""
    device, root = torch.device("cpu"), Path(options.data_dir)
    args = project_args(options.flags, device)
    pixels = to_pixels(load_images("mnist", root, True), device)

    def ready() -> None:
        print("@ready", flush=True)
        if not sys.stdin.readline():  # the benchmark is gone
            sys.exit(1)

    for job in options.worker.split(","):
        loop, batch = job.split(":")
        args.batch_size = int(batch)
        print(
            "@result " + json.dumps(run_loop(loop, args, device, root, pixels, options, ready)),
            flush=True,
        )


def flop_bound(args, device, batch: int, repeats: int = 300) -> tuple[float, float]:
    """(FLOPs per image for forward and backward, matmul FLOP/s sustained at the model's sizes, in
    bf16 under --amp)."""
    model = VAE(784, tuple(args.hidden), args.latent_dim, args.activation)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # forward: x@W for every layer; backward: the weight gradient for every layer and the input
    # gradient for every layer but the first (the images need none).
    macs = sum(layer.in_features * layer.out_features for layer in layers)
    flops = 2 * (2 * macs + macs - layers[0].in_features * layers[0].out_features)
    operands, dtype = [], torch.bfloat16 if args.amp else torch.float32
    for layer in layers:
        x = torch.randn(batch, layer.in_features, device=device, dtype=dtype)
        w = torch.randn(layer.in_features, layer.out_features, device=device, dtype=dtype)
        g = torch.randn(batch, layer.out_features, device=device, dtype=dtype)
        operands.append((x, w, g, layer is layers[0]))

    def gemms() -> None:
        for x, w, g, first in operands:
            x @ w
            x.T @ g
            if not first:
                g @ w.T

    for _ in range(20):
        gemms()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        gemms()
    sync(device)
    return flops, repeats * batch * flops / (time.perf_counter() - start)


def time_to_quality(
    args, device, train, test, target: float, limit: float
) -> tuple[float | None, int, float]:
    """Wall seconds (training and evaluation, and compiling with --compile) until the test loss
    first falls below `target`, with main.py's thread policy from a fresh start."""
    model, optimizer = fresh(args, device)
    model.start_at_mean_image(train.mean(0))  # as main.py starts a run, so the run is main.py's
    torch._dynamo.reset()  # forget the compiled code of the loops timed before: a run compiles anew
    tuner = ThreadTuner.for_run(args.threads, device, announce=quiet)
    start, epoch, loss = time.perf_counter(), 0, float("inf")
    train_epoch = epoch_trainer(args, model, optimizer, train, tuner, args.epochs)
    try:
        while time.perf_counter() - start < limit:
            epoch += 1
            train_epoch(epoch)
            loss = likelihood.test_loss(model, test, args).metrics()["test_loss"]
            if loss < target:
                return time.perf_counter() - start, epoch, loss
        return None, epoch, loss
    finally:
        torch.set_num_threads(DEFAULT_THREADS)


def variants(args, device, train, options) -> None:
    """The project's loop at the default batch, one setting changed at a time, interleaved."""
    changes = {
        "as is": {},
        "--threads 1": {"threads": 1},
        f"--threads {DEFAULT_THREADS}": {"threads": DEFAULT_THREADS},
        "--amp (bf16 autocast)": {"amp": True},
        "--compile": {"compile": True},
        "--compile --amp": {"compile": True, "amp": True},
    }
    results = {name: [] for name in changes}
    for _ in range(options.rounds):
        for name, change in changes.items():
            changed = argparse.Namespace(**{**vars(args), **change})
            results[name].append(project_loop(changed, device, train, options.epochs))
    for name, runs in results.items():
        print(
            f"{device.type} batch {args.batch_size}, {name:<24} "
            f"{statistics.median(together([r]) for r in runs):>9,.0f} img/s"
            f"  (warm-up epoch {statistics.median(r['warmup'] for r in runs):.1f} s)",
            flush=True,
        )


def profile(args, device, train, steps: int = 200) -> None:
    """The operators that take the time in `steps` steps of the project's loop."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, optimizer = fresh(args, device)
    subset = train[: steps * args.batch_size]
    tuner = ThreadTuner.for_run(args.threads, device, announce=quiet)
    train_epoch = epoch_trainer(args, model, optimizer, subset, tuner, 2)
    train_epoch(0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        train_epoch(1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    torch.set_num_threads(DEFAULT_THREADS)


def condition_rows(args, device, root: Path, train, options, batches: list[int]) -> None:
    """The table: each condition's loops at each batch size, in interleaved rounds."""
    policy = f"--threads {args.threads}" if args.threads else "auto"
    fixed = argparse.Namespace(**{**vars(args), "threads": DEFAULT_THREADS})
    conditions = {  # name: (thread policy of the project's loop, its args)
        "idle": (policy, args),
        "idle, fixed": (f"--threads {DEFAULT_THREADS}", fixed),
        "one core busy": (policy, args),
        "two runs side by side": (policy, args),
    }
    results = {
        (name, batch, loop): [] for name in conditions for batch in batches for loop in LOOPS
    }
    rounds = range(1, options.rounds + 1)  # interleaved: a slow spell of the machine hits all

    def record(name: str, batch: int, loop: str, runs: list[dict], round_: int) -> None:
        results[name, batch, loop].append(runs)
        used = ",".join(str(count) for run in runs for count in run["threads"])
        print(
            f"round {round_}/{options.rounds}: {name}, batch {batch}, {loop} loop: "
            f"{together(runs):,.0f} img/s, threads {used}",
            file=sys.stderr,
            flush=True,
        )

    def measure_here(name: str, loop: str, batch: int, round_: int) -> None:
        """One loop, in this process, with the settings of the condition `name`."""
        conditions[name][1].batch_size = batch
        run = run_loop(loop, conditions[name][1], device, root, train, options)
        record(name, batch, loop, [run], round_)

    for round_ in rounds:
        # idle: the two policies back to back at each batch size, in turn first, so that a drift
        # of the machine between them does not pass for the policy's cost; then the DataLoader's
        policies = ["idle", "idle, fixed"][:: 1 if round_ % 2 else -1]
        for batch in batches:
            for name, loop in [(name, "project") for name in policies] + [("idle", "dataloader")]:
                measure_here(name, loop, batch, round_)
        with busy_core(options.busy_limit):
            for batch in batches:
                for loop in LOOPS:
                    measure_here("one core busy", loop, batch, round_)
        jobs = [(loop, batch) for batch in batches for loop in LOOPS]
        for (loop, batch), pair in zip(jobs, side_by_side(jobs, options)):
            record("two runs side by side", batch, loop, pair, round_)
    args.batch_size = flags.build_parser().get_default("batch_size")

    print(
        f"{'condition':<23}{'policy':<13}{'batch':>5}{'project img/s':>15}{'DataLoader img/s':>18}"
        f"{'ratio':>7}  {'threads':<9}target check (medians of {options.rounds} rounds' own ratios)"
    )
    for batch in batches:
        idle = [together(r) for r in results["idle", batch, "project"]]
        for name, (row_policy, _) in conditions.items():
            ours = [together(r) for r in results[name, batch, "project"]]
            theirs = [together(r) for r in results[name, batch, "dataloader"]] or [
                together(r) for r in results["idle", batch, "dataloader"]
            ]
            counts = {
                c for runs in results[name, batch, "project"] for r in runs for c in r["threads"]
            }
            used = ",".join(map(str, sorted(counts)))  # the thread counts of its timed epochs
            ratio = median_ratio(ours, theirs)
            if name == "idle":
                check = ""
            elif name == "idle, fixed":
                check = f"idle auto at {median_ratio(idle, ours):.0%} of it (target 95%)"
            elif name == "one core busy":
                check = f"{median_ratio(ours, idle):.0%} of idle (target 75%)"
            else:
                check = f"together {median_ratio(ours, idle):.2f}x one run alone (target 1x)"
            print(
                f"{name:<23}{row_policy:<13}{batch:>5}{statistics.median(ours):>15,.0f}"
                f"{statistics.median(theirs):>18,.0f}{ratio:>6.1f}x  {used:<9}{check}",
                flush=True,
            )


def run() -> None:
    startup.after_imports()  # as main.py does, before torch starts threads; both loops use it
    # `kill` ends the benchmark as Ctrl-C does, through the `finally` that stops its processes
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    a = parser.add_argument
    a("--data-dir", default="./data", help="folder with MNIST/raw (default: %(default)s)")
    a(
        "--batch-sizes",
        default=f"32,{flags.build_parser().get_default('batch_size')}",
        help="batch sizes to compare (default: %(default)s: the tutorial's and the project's)",
    )
    a(
        "--epochs",
        type=int,
        default=2,
        help="measured epochs of the project's loop (default: %(default)s)",
    )
    a(
        "--dataloader-epochs",
        type=int,
        default=1,
        help="measured epochs of the DataLoader loop (default: %(default)s)",
    )
    a(
        "--dataloader-limit",
        type=float,
        default=30.0,
        help="seconds after which the DataLoader loop stops early (default: %(default)s)",
    )
    a(
        "--rounds",
        type=int,
        default=3,
        help="interleaved repeats; medians are printed (default: %(default)s)",
    )
    a(
        "--target",
        type=float,
        default=36.0,
        help="test loss for time to quality (default: %(default)s)",
    )
    a(
        "--busy-limit",
        type=float,
        default=600.0,
        help="seconds after which the busy-core process ends itself (default: %(default)s)",
    )
    a(
        "--quick",
        action="store_true",
        help="a check that it runs: 500 synthetic images, one round of one epoch each",
    )
    a(
        "--variants",
        action="store_true",
        help="also time the loop with --threads 1 and N, --amp, --compile, both",
    )
    a(
        "--profile",
        action="store_true",
        help="also print the top operators of the loop (torch.profiler)",
    )
    a(
        "--flags",
        default="",
        help="main.py flags for the project's loop and the time to quality, "
        'e.g. --flags="--compile --amp" (default: none, the defaults)',
    )
    a(
        "--gpu",
        action="store_true",
        help="instead, the project's loop on CUDA: images per second at batch "
        f"{', '.join(map(str, GPU_BATCHES))}, an epoch split into training and the rest, "
        "the time to quality",
    )
    a("--worker", help=argparse.SUPPRESS)  # loop:batch,... : one of the two side-by-side runs
    options = parser.parse_args()
    if options.worker:
        return worker(options)
    if options.gpu and not torch.cuda.is_available():
        sys.exit(
            f"--gpu: torch {torch.__version__} finds no CUDA device here; run it on one that has"
        )
    if options.quick:
        options.rounds, options.epochs, options.dataloader_epochs = 1, 1, 1
        options.busy_limit, options.dataloader_limit = 120.0, 1.0

    args = project_args(options.flags, torch.device("cuda" if options.gpu else "cpu"))
    root = Path(options.data_dir)
    real = not options.quick and all(
        (raw_folder("mnist", root) / name).exists()
        for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    )
    with tempfile.TemporaryDirectory() as tmp:
        if not real:
            root = Path(tmp)
            synthetic_mnist(root, *((500, 200) if options.quick else ()))
        options.data_root = root
        source = (
            f"real MNIST from {options.data_dir}"
            if real
            else "synthetic data, "
            + (
                "500 images (--quick)"
                if options.quick
                else f"MNIST-sized (no MNIST in {options.data_dir})"
            )
        )
        print(
            f"data: {source}; torch {torch.__version__}, {DEFAULT_THREADS} threads by default; "
            f"model 784-{'-'.join(map(str, args.hidden))}-{args.latent_dim}, Adam (fused), "
            f"lr {args.lr}; "
            f"project's loop with {options.flags or 'the default flags'}; {os.cpu_count()} CPUs"
        )
        (gpu_section if options.gpu else measure)(args, root, real, options)


def measure(args, root: Path, real: bool, options) -> None:
    """Every row: conditions, FLOP bound, variants and profile if asked, time to quality."""
    device = torch.device("cpu")  # the conditions are about CPU threads; a GPU's loop has no policy
    train = to_pixels(load_images("mnist", root, True), device)
    default_batch = flags.build_parser().get_default("batch_size")
    condition_rows(
        args, device, root, train, options, [int(b) for b in options.batch_sizes.split(",")]
    )

    fixed = argparse.Namespace(**{**vars(args), "batch_size": default_batch})
    repeats = 30 if options.quick else 300
    matmul = {}  # median matmul FLOP/s at torch's default count and at one thread
    for threads in dict.fromkeys((DEFAULT_THREADS, 1)):
        torch.set_num_threads(threads)
        rates = [flop_bound(fixed, device, default_batch, repeats) for _ in range(options.rounds)]
        flops, matmul[threads] = rates[0][0], statistics.median(r[1] for r in rates)
        print(
            f"FLOP bound at batch {default_batch}: {flops / 1e6:.2f} MFLOP per image (forward and "
            f"backward); torch.matmul sustains {matmul[threads] / 1e9:.0f} GFLOP/s at the model's "
            f"sizes{' in bf16' if args.amp else ''} at {messages.plural(threads, 'thread')}, idle "
            f"({min(r[1] for r in rates) / 1e9:.0f}..{max(r[1] for r in rates) / 1e9:.0f}) "
            f"-> {matmul[threads] / flops:,.0f} img/s; compare the idle row at batch "
            f"{default_batch}",
            flush=True,
        )
    torch.set_num_threads(DEFAULT_THREADS)
    if len(matmul) > 1:
        share = matmul[1] / matmul[DEFAULT_THREADS]
        print(
            f"one core's share: the matmuls at 1 thread run at {share:.0%} of their speed at "
            f"{DEFAULT_THREADS}: on one core, a loop made only of them would keep that share of "
            "its idle speed",
            flush=True,
        )
    if options.variants:
        variants(fixed, device, train, options)
    if options.profile:
        profile(fixed, device, train)
    if not real:
        print("time to quality: needs real MNIST (--data-dir)")
        return
    test = to_pixels(load_images("mnist", root, False), device)
    for condition in ("idle", "one core busy"):
        for _ in range(options.rounds):
            with busy_core(options.busy_limit) if condition != "idle" else contextlib.nullcontext():
                seconds, epochs, loss = time_to_quality(
                    fixed, device, train, test, options.target, limit=120
                )
            given = options.flags or "the defaults"
            outcome = (
                f"test loss {loss:.2f} < {options.target} after {epochs} epochs, {seconds:.1f} s "
                "of training and evaluation"
                if seconds is not None
                else f"test loss {loss:.2f} still above {options.target} after {epochs} epochs "
                "(120 s)"
            )
            print(f"time to quality, {condition}, {given}: {outcome}", flush=True)


GPU_BATCHES = (32, 100, 1000)


def gpu_section(args, root: Path, real: bool, options) -> None:
    """--gpu: the project's loop on CUDA: images per second at each of GPU_BATCHES, an epoch as
    main.py runs it split into training and the rest, and the time to quality. The device is
    synchronized around the timed regions only (train_epoch reads its losses every 50 steps)."""
    device = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}", flush=True)
    train = to_pixels(load_images("mnist", root, True), device)
    for batch in GPU_BATCHES:
        batched = argparse.Namespace(**{**vars(args), "batch_size": batch})
        runs = [project_loop(batched, device, train, options.epochs) for _ in range(options.rounds)]
        print(
            f"cuda batch {batch:>4}: {statistics.median(together([r]) for r in runs):>11,.0f} "
            f"img/s (warm-up epoch {statistics.median(r['warmup'] for r in runs):.1f} s)",
            flush=True,
        )
    splits = [epoch_split(root, options.flags, options.epochs + 1) for _ in range(options.rounds)]
    training, rest = (statistics.median(split[part] for split in splits) for part in (0, 1))
    print(
        f"cuda epoch as main.py runs it, batch {args.batch_size}: {training + rest:.2f} s = "
        f"{training:.2f} s training + {rest:.2f} s the rest (test loss, latent map, checkpoint, "
        "pictures)",
        flush=True,
    )
    if not real:
        print("time to quality: needs real MNIST (--data-dir)")
        return
    test = to_pixels(load_images("mnist", root, False), device)
    for _ in range(options.rounds):
        seconds, epochs, loss = time_to_quality(args, device, train, test, options.target, 120)
        reached = f"{seconds:.1f} s" if seconds is not None else "not within 120 s"
        print(
            f"time to quality, cuda, {options.flags or 'the defaults'}: {reached} (test loss "
            f"{loss:.2f}, target {options.target}, {messages.plural(epochs, 'epoch')})",
            flush=True,
        )


def epoch_split(root: Path, main_flags: str, epochs: int) -> tuple[float, float]:
    """Seconds of an epoch of main.py on CUDA with `main_flags` (no Visdom, a temporary run
    folder), medians over epochs 2..`epochs`: (training, the rest: testing, the latent map, the
    checkpoint and the pictures), from metrics.jsonl: epoch_seconds, and the growth of
    elapsed_seconds since the epoch before less it."""
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        folder = Path(out) / "run"
        argv = [*shlex.split(main_flags), "--epochs", str(epochs), "--device", "cuda"]
        if main.main([*argv, "--no-visdom", "--data-dir", str(root), "--out", str(folder)]):
            raise RuntimeError(f"main.py {' '.join(argv)} failed")
        rows = read_metrics(folder / "metrics.jsonl")
    pairs = list(zip(rows, rows[1:]))  # (the epoch before, the epoch)
    training = [row["epoch_seconds"] for _, row in pairs]
    whole = [row["elapsed_seconds"] - before["elapsed_seconds"] for before, row in pairs]
    return statistics.median(training), statistics.median(w - t for w, t in zip(whole, training))


if __name__ == "__main__":
    run()
