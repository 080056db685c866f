"""Training throughput of main.py's loop against the common DataLoader pipeline, a FLOP bound, and time to quality.

    python benchmarks/throughput.py --data-dir ../shared/data

(a) the project's loop (main.train_epoch: the split held as one tensor on the device, shuffled by
index), with main.py's defaults or the given --flags; (b) the common pipeline: torchvision MNIST
with transforms.ToTensor() through a shuffling DataLoader, the same model, optimizer and batch
size, eager and in float32 whatever --flags say. Images per second over whole epochs, after a
warm-up. Real MNIST when --data-dir has it, otherwise synthetic data of MNIST's size.
"""

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import main  # noqa: E402
from data import load_images, raw_folder, to_pixels  # noqa: E402
from vae import VAE, negative_elbo  # noqa: E402


def synthetic_mnist(root: Path) -> None:
    """Random 28x28 uint8 images in MNIST's IDX files and sizes (60,000 train, 10,000 test)."""
    rng = np.random.default_rng(0)
    folder = raw_folder("mnist", root)
    folder.mkdir(parents=True)
    for prefix, n in (("train", 60_000), ("t10k", 10_000)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + rng.integers(0, 10, n, dtype=np.uint8).tobytes()
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)


ADAMS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}


def fresh(args, device, adam: str = "fused"):
    """A new model and optimizer, seeded as main.py seeds a run."""
    torch.manual_seed(args.seed)
    model = VAE(784, tuple(args.hidden), args.latent_dim, args.activation).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=args.lr, **ADAMS[adam])


def project_loop(args, device, pixels, epochs: int, adam: str = "fused") -> tuple[float, float]:
    """(images per second of main.train_epoch over `epochs` whole epochs after one warm-up epoch,
    seconds of that warm-up epoch, which includes torch.compile's compilation with args.compile)."""
    model, optimizer = fresh(args, device, adam)
    torch._dynamo.reset()
    loss_fn = main.loss_function(args)
    start = time.perf_counter()
    main.train_epoch(model, loss_fn, optimizer, pixels, args, 0, device)
    sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        main.train_epoch(model, loss_fn, optimizer, pixels, args, epoch, device)
    sync(device)
    return epochs * pixels.shape[0] / (time.perf_counter() - start), warmup


def dataloader_loop(args, device, root: Path, epochs: int, warmup_steps: int = 100) -> float:
    """Images per second of the usual tutorial loop over `epochs` whole epochs, after a warm-up."""
    model, optimizer = fresh(args, device)
    dataset = datasets.MNIST(str(root), train=True, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)

    def step(x):
        x = x.to(device).view(-1, 784)
        logits, mu, logvar = model(x)
        loss = negative_elbo(logits, x, mu, logvar, args.beta, args.likelihood)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item() * x.shape[0]

    for i, (x, _) in enumerate(loader):
        if i == warmup_steps:
            break
        step(x)
    start = time.perf_counter()
    for _ in range(epochs):
        total = sum(step(x) for x, _ in loader)
    assert np.isfinite(total)
    return epochs * len(dataset) / (time.perf_counter() - start)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flop_bound(args, device, batch: int, repeats: int = 300) -> tuple[float, float]:
    """(FLOPs per image for forward and backward, matmul FLOP/s sustained at the model's sizes, in
    bf16 under --amp)."""
    model = VAE(784, tuple(args.hidden), args.latent_dim, args.activation)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # forward: x@W for every layer; backward: the weight gradient for every layer and the input
    # gradient for every layer but the first (the images need none).
    macs = sum(l.in_features * l.out_features for l in layers)
    flops = 2 * (2 * macs + macs - layers[0].in_features * layers[0].out_features)
    operands, dtype = [], torch.bfloat16 if args.amp else torch.float32
    for l in layers:
        x = torch.randn(batch, l.in_features, device=device, dtype=dtype)
        w = torch.randn(l.in_features, l.out_features, device=device, dtype=dtype)
        g = torch.randn(batch, l.out_features, device=device, dtype=dtype)
        operands.append((x, w, g, l is layers[0]))

    def gemms():
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


def time_to_quality(args, device, train, test, target: float, limit: float) -> tuple[float | None, int, float]:
    """Wall seconds (training and evaluation, and compiling with --compile) until the test loss
    first falls below `target`."""
    model, optimizer = fresh(args, device)
    model.start_at_mean_image(train.mean(0))  # as main.py starts a run, so the run is main.py's
    torch._dynamo.reset()  # forget the compiled code of the loops timed before: a run compiles anew
    start, epoch, loss = time.perf_counter(), 0, float("inf")
    loss_fn = main.loss_function(args)
    while time.perf_counter() - start < limit:
        epoch += 1
        main.train_epoch(model, loss_fn, optimizer, train, args, epoch, device)
        loss = main.evaluate(model, test, args)["test_loss"]
        if loss < target:
            return time.perf_counter() - start, epoch, loss
    return None, epoch, loss


def variants(args, device, train, options) -> None:
    """The project's loop at the default batch with one setting changed at a time (interleaved rounds)."""
    changes = {"as is (fused Adam, torch's threads)": {}, "foreach Adam": {"adam": "foreach"},
               "single-tensor Adam": {"adam": "single"}, "1 thread": {"threads": 1},
               "--amp (bf16 autocast)": {"amp": True}, "--compile": {"compile": True},
               "--compile --amp": {"compile": True, "amp": True}}
    if device.type != "cpu":
        del changes["1 thread"]
    results = {name: [] for name in changes}
    threads = torch.get_num_threads()
    given = args.amp, args.compile
    for _ in range(options.rounds):
        for name, change in changes.items():
            torch.set_num_threads(change.get("threads", threads))
            args.amp, args.compile = change.get("amp", False), change.get("compile", False)
            results[name].append(project_loop(args, device, train, options.epochs, change.get("adam", "fused")))
    torch.set_num_threads(threads)
    args.amp, args.compile = given
    for name, runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        print(f"{device.type} batch {args.batch_size}, {name:<36} {rate:>9,.0f} img/s"
              f"  (warm-up epoch {statistics.median(r[1] for r in runs):.1f} s)", flush=True)


def profile(args, device, train, steps: int = 200) -> None:
    """The operators that take the time in `steps` steps of the project's loop."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    model, optimizer = fresh(args, device)
    subset = train[: steps * args.batch_size]
    main.train_epoch(model, main.batch_loss, optimizer, subset, args, 0, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        main.train_epoch(model, main.batch_loss, optimizer, subset, args, 1, device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def run() -> None:
    main.flush_denormals()  # as main.py does, before torch starts its threads; both loops run with it
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="./data", help="folder with MNIST/raw (default: %(default)s)")
    parser.add_argument("--batch-sizes", default=f"32,{main.build_parser().get_default('batch_size')}",
                        help="batch sizes to compare (default: %(default)s: the tutorial's and the project's)")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs of the project's loop (default: %(default)s)")
    parser.add_argument("--dataloader-epochs", type=int, default=1, help="measured epochs of the DataLoader loop (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; medians are printed (default: %(default)s)")
    parser.add_argument("--target", type=float, default=36.0, help="test loss for time to quality (default: %(default)s)")
    parser.add_argument("--variants", action="store_true", help="also time the loop with fused/foreach/single Adam, 1 thread, --amp, --compile, both")
    parser.add_argument("--profile", action="store_true", help="also print the top operators of the loop (torch.profiler)")
    parser.add_argument("--flags", default="", help='main.py flags for the project\'s loop and the time to quality, '
                        'e.g. --flags="--compile --amp" (default: none, the defaults)')
    options = parser.parse_args()

    args = main.build_parser().parse_args(shlex.split(options.flags))  # the project's settings
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    root = Path(options.data_dir)
    real = all((raw_folder("mnist", root) / name).exists() for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"))
    tmp = tempfile.TemporaryDirectory()
    if not real:
        root = Path(tmp.name)
        synthetic_mnist(root)
    print(f"data: {'real MNIST from ' + str(options.data_dir) if real else 'synthetic, MNIST-sized (no MNIST in ' + str(options.data_dir) + ')'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; model 784-{'-'.join(map(str, args.hidden))}-{args.latent_dim}, "
          f"Adam (fused), lr {args.lr}; project's loop with {options.flags or 'the default flags'}")
    print(f"{'device':<7}{'batch':>6}{'project img/s':>15}{'DataLoader img/s':>18}{'ratio':>7}   "
          f"(medians of {options.rounds} interleaved rounds; ratio: median of the rounds' ratios)")
    default_batch = main.build_parser().get_default("batch_size")
    for device in devices:
        train = to_pixels(load_images("mnist", root, True), device)
        for batch in map(int, options.batch_sizes.split(",")):
            args.batch_size = batch
            ours, theirs, matmul = [], [], []
            for _ in range(options.rounds):  # interleaved, so that a slow spell of a shared machine hits both
                ours.append(project_loop(args, device, train, options.epochs)[0])
                theirs.append(dataloader_loop(args, device, root, options.dataloader_epochs))
                if batch == default_batch:
                    flops, rate = flop_bound(args, device, batch)
                    matmul.append(rate)
            ratios = [a / b for a, b in zip(ours, theirs)]
            print(f"{device.type:<7}{batch:>6}{statistics.median(ours):>15,.0f}{statistics.median(theirs):>18,.0f}"
                  f"{statistics.median(ratios):>6.1f}x   (project {min(ours):,.0f}..{max(ours):,.0f}, "
                  f"DataLoader {min(theirs):,.0f}..{max(theirs):,.0f}, ratio {min(ratios):.1f}..{max(ratios):.1f})", flush=True)
            if matmul:
                fraction = statistics.median(a * flops / m for a, m in zip(ours, matmul))
                print(f"{'':13}FLOP bound at batch {batch}: {flops / 1e6:.2f} MFLOP per image (forward and backward); "
                      f"torch.matmul sustains {statistics.median(matmul) / 1e9:.0f} GFLOP/s at the model's sizes{' in bf16' if args.amp else ''} "
                      f"({min(matmul) / 1e9:.0f}..{max(matmul) / 1e9:.0f}) -> {statistics.median(matmul) / flops:,.0f} img/s; "
                      f"the loop reaches {fraction:.0%} of it (median of the rounds)", flush=True)
        args.batch_size = default_batch
        if options.variants:
            variants(args, device, train, options)
        if options.profile:
            profile(args, device, train)
        if not real:
            print("time to quality: needs real MNIST (--data-dir)")
            continue
        test = to_pixels(load_images("mnist", root, False), device)
        for _ in range(options.rounds):
            seconds, epochs, loss = time_to_quality(args, device, train, test, options.target, limit=120)
            print(f"{device.type}: time to quality with {options.flags or 'the defaults'}: test loss {loss:.2f} < {options.target} after "
                  f"{epochs} epochs, {seconds:.1f} s of training and evaluation" if seconds is not None else
                  f"{device.type}: test loss {loss:.2f} still above {options.target} after {epochs} epochs (120 s)", flush=True)

if __name__ == "__main__":
    run()
