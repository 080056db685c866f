"""main.py end to end on tiny MNIST files read by torchvision: metrics, checkpoints, resume."""

import gc
import math
import shlex
import shutil
import signal
import subprocess
import sys
import weakref

import pytest
import torch

import main
import vae
from conftest import DEVICES, QUICK, ROOT, interrupt, metrics, run_main, wait_for, write_mnist
from helpers import data, flags, likelihood, models, no_training, research, runfiles, settings
from helpers.batches import EpochBatches
from helpers.threads import ThreadTuner

TIMINGS = set(runfiles.TIMING_KEYS)


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


@pytest.mark.parametrize("device", DEVICES)
def test_two_epochs_write_metrics_checkpoint_and_pngs(data_dir, tmp_path, capsys, device):
    out = tmp_path / "run"
    argv = [*QUICK, "--data-dir", str(data_dir), "--out", str(out), "--device", device]
    assert main.main(argv) == 0
    rows = metrics(out)
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        for key in (
            "train_loss",
            "test_loss",
            "test_recon",
            "test_kl",
            "epoch_seconds",
            "train_images_per_second",
        ):
            assert math.isfinite(row[key]), key
        assert row["test_loss"] == pytest.approx(row["test_recon"] + row["test_kl"])
        # the KL of each latent dimension, to 4 decimals: the bars add up to the KL
        assert len(row["test_kl_per_dim"]) == 10 and min(row["test_kl_per_dim"]) >= 0
        assert sum(row["test_kl_per_dim"]) == pytest.approx(row["test_kl"], abs=1e-3)
    assert rows[1]["test_loss"] < rows[0]["test_loss"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["args"]["latent_dim"] == 10
    for name in (
        "originals",
        "reconstructions",
        "samples",
        "traversal",
        "interpolation",
        "least_likely",
        "latent_map",
        "kl_per_dim",
    ):
        assert (out / f"{name}.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and f"run folder {out}" in printed


def test_same_seed_gives_the_same_metrics(data_dir, tmp_path):
    # bit-identical with a fixed thread count (README): 1 and 2 threads sum in other orders
    fixed = [*QUICK, "--data-dir", str(data_dir), "--threads", "1"]
    for name in ("a", "b"):
        assert main.main([*fixed, "--out", str(tmp_path / name), "--seed", "3"]) == 0
    assert without_timings(metrics(tmp_path / "a")) == without_timings(metrics(tmp_path / "b"))
    assert main.main([*fixed, "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    assert without_timings(metrics(tmp_path / "a")) != without_timings(metrics(tmp_path / "c"))


def test_resumed_run_ends_with_the_same_metrics_as_an_uninterrupted_one(data_dir, tmp_path):
    flags = [
        "--batch-size",
        "64",
        "--no-visdom",
        "--data-dir",
        str(data_dir),
        "--binarize",
        "dynamic",
        "--threads",  # bit-identical with a fixed thread count (README)
        "1",
    ]
    assert main.main([*flags, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    assert main.main([*flags, "--epochs", "1", "--out", str(tmp_path / "parts")]) == 0
    resume = ["--resume", str(tmp_path / "parts" / "checkpoint.pt"), "--threads", "1"]
    assert main.main([*resume, "--epochs", "3"]) == 0
    assert without_timings(metrics(tmp_path / "parts")) == without_timings(
        metrics(tmp_path / "whole")
    )


def test_ctrl_c_keeps_the_last_epoch_and_says_how_to_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--epochs",
            "1000",
            "--no-visdom",
            "--batch-size",
            "8",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(metrics(out)) >= 2, "two epochs", process)
    stdout, stderr = interrupt(process)
    assert process.returncode == 130
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert f"holds epoch {saved}" in stdout and f"--resume {out / 'checkpoint.pt'}" in stdout
    assert "Traceback" not in stderr
    assert [row["epoch"] for row in metrics(out)] == list(range(1, saved + 1))
    assert not (out / "checkpoint.pt.tmp").exists()
    # the printed command works as printed, from where the run was started
    command = shlex.split(stdout.split("Resume with: ")[1].splitlines()[0])
    resumed = subprocess.run([*command, "--epochs", str(saved + 1)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(out)[-1]["epoch"] == saved + 1


def test_ctrl_c_inside_a_checkpoint_write_lets_the_write_finish(
    data_dir, tmp_path, capsys, monkeypatch
):
    """The Ctrl-C lands while torch.save writes epoch 2's checkpoint: the write completes, then the
    run stops as for any Ctrl-C, with both files at epoch 2 and no temporary file left."""
    save = torch.save

    def save_with_ctrl_c(state, file):
        if state["epoch"] == 2:
            signal.raise_signal(signal.SIGINT)
        save(state, file)

    monkeypatch.setattr(torch, "save", save_with_ctrl_c)
    out = tmp_path / "run"
    assert (
        main.main([*QUICK, "--epochs", "5", "--data-dir", str(data_dir), "--out", str(out)]) == 130
    )
    monkeypatch.undo()
    assert "holds epoch 2. Resume with:" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert [row["epoch"] for row in metrics(out)] == [1, 2]
    assert not (out / "checkpoint.pt.tmp").exists()


@pytest.mark.parametrize("mode", ["--evaluate", "--generate"])
def test_ctrl_c_in_evaluate_or_generate_says_what_it_stopped(
    trained_run, tmp_path, capsys, monkeypatch, mode
):
    """A Ctrl-C while --evaluate estimates, or while --generate writes its pictures, says which was
    interrupted and what it wrote; not the training run's line about epochs."""
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    checkpoint = out / "checkpoint.pt"
    before = metrics(out)
    ctrl_c = lambda *args, **kwargs: signal.raise_signal(signal.SIGINT)  # noqa: E731
    monkeypatch.setattr(likelihood, "per_image_log_likelihood", ctrl_c)
    monkeypatch.setattr(no_training, "save_pngs", ctrl_c)
    assert main.main([mode, str(checkpoint)]) == 130
    printed = capsys.readouterr().out
    assert "epoch" not in printed.split("interrupted")[1]
    if mode == "--evaluate":
        assert printed.startswith("test loss ")  # the interrupt came after it, in the estimate
        assert f"the evaluation of {checkpoint} did not finish; it wrote nothing" in printed
    else:
        assert f"the generation of {checkpoint}'s pictures did not finish" in printed
    assert metrics(out) == before


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # printed: failed
def test_a_ctrl_c_that_python_drops_in_a_weakref_callback_still_stops_the_run(
    data_dir, tmp_path, capsys, monkeypatch
):
    """Python prints and drops a KeyboardInterrupt raised inside a weakref callback (or a
    finalizer); a single Ctrl-C landing there must stop the run all the same, without a trace."""
    step, steps = ThreadTuner.step, []

    def step_with_a_dropped_ctrl_c(self) -> None:
        step(self)
        steps.append(None)
        if len(steps) == 12:  # in epoch 2: 512 images, 8 steps an epoch
            thing = type("Thing", (), {})()
            ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))  # noqa: F841
            del thing  # the callback runs here; its KeyboardInterrupt is dropped

    monkeypatch.setattr(ThreadTuner, "step", step_with_a_dropped_ctrl_c)
    out = tmp_path / "run"
    assert (
        main.main([*QUICK, "--epochs", "5", "--data-dir", str(data_dir), "--out", str(out)]) == 130
    )
    assert len(steps) == 12  # stopped at once, in the step it came
    printed = capsys.readouterr()
    assert "holds epoch 1. Resume with:" in printed.out and "Traceback" not in printed.err
    assert [row["epoch"] for row in metrics(out)] == [1]


def test_a_checkpoint_from_a_gpu_machine_evaluates_and_resumes_here(
    data_dir, tmp_path, capsys, monkeypatch
):
    """Where a run computes belongs to the invocation: a checkpoint made with --device cuda
    --threads 7 --compile --amp, whose data folder this machine lacks, evaluates and resumes here
    with this invocation's settings (no --device: auto), reading the data from ./data."""
    out = tmp_path / "run"
    checkpoint = str(out / "checkpoint.pt")
    argv = [*QUICK, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)]
    assert main.main(argv) == 0
    assert settings.resolve(["--evaluate", checkpoint])[0].data_dir == str(data_dir)  # it is here
    state = torch.load(checkpoint, weights_only=True)
    gone = str(tmp_path / "gpu-box" / "data")  # where the data was on the machine it came from
    state["args"].update(device="cuda", threads=7, compile=True, amp=True, data_dir=gone)
    torch.save(state, checkpoint)
    laptop = tmp_path / "laptop"
    write_mnist(laptop / "data" / "MNIST" / "raw")
    monkeypatch.chdir(laptop)
    args = settings.resolve(["--evaluate", checkpoint])[0]
    assert (args.device, args.threads, args.compile, args.amp) == ("auto", None, False, "auto")
    assert args.data_dir == str(laptop / "data")  # ./data here, kept absolute
    assert f"--data-dir {gone} holds no mnist here: reading ./data" in capsys.readouterr().out
    assert main.main(["--evaluate", checkpoint, "--eval-k", "5"]) == 0
    assert main.main(["--resume", checkpoint, "--epochs", "2"]) == 0
    assert [row["epoch"] for row in metrics(out)] == [1, 1, 2]  # epoch 1, its evaluation, 2
    saved = torch.load(checkpoint, weights_only=True)["args"]  # this invocation's settings
    assert (saved["device"], saved["compile"]) == ("auto", False)
    assert saved["data_dir"] == str(laptop / "data")


@pytest.mark.parametrize(
    "dataset, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")]
)
def test_missing_data_without_network_is_one_clear_error(tmp_path, dataset, folder):
    (tmp_path / "empty").mkdir()
    result = run_main(
        "--data-dir",
        str(tmp_path / "empty"),
        "--no-visdom",
        "--out",
        str(tmp_path / "run"),
        "--dataset",
        dataset,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in error[0]
    assert str(tmp_path / "empty" / folder / "raw") in error[0] and dataset in error[0]
    # the failed attempt leaves nothing behind: no empty run folder, no folders in --data-dir
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "run").exists()


def test_gz_files_that_are_not_torchvisions_are_used_without_a_download(tmp_path, capsys):
    """Another distributor's .gz files (different bytes from torchvision's, so its checksums fail)
    are unpacked and used; no download is tried."""
    write_mnist(tmp_path / "data" / "MNIST" / "raw", gz=True)
    argv = [
        *QUICK,
        "--epochs",
        "1",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main.main(argv) == 0
    printed = capsys.readouterr().out
    assert "downloading" not in printed and "after 1 epoch;" in printed


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_and_generate_from_a_checkpoint(data_dir, tmp_path, capsys, device):
    out = tmp_path / "run"
    assert (
        main.main(
            [
                *QUICK,
                "--epochs",
                "1",
                "--latent-dim",
                "2",
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
                "--device",
                device,
            ]
        )
        == 0
    )
    for png in out.glob("*.png"):
        png.unlink()
    capsys.readouterr()
    evaluate = ["--evaluate", str(out / "checkpoint.pt"), "--eval-k", "20", "--device", device]
    assert main.main(evaluate) == 0
    printed = capsys.readouterr().out
    assert "k=20" in printed and "variance 0.5" in printed and "392·log π" in printed
    evaluation = metrics(out)[-1]
    assert (
        evaluation["evaluation"] == "importance-weighted"
        and evaluation["k"] == 20
        and evaluation["epoch"] == 1
    )
    # log p(x) >= ELBO in expectation; the gaussian ELBO is -(loss) less the density's constant
    elbo = -evaluation["test_loss"] - 784 * 0.5 * math.log(math.pi)
    assert f"+ {784 * 0.5 * math.log(math.pi):.2f} (392·log π)" in printed  # as the output says
    assert evaluation["test_log_likelihood"] > elbo
    assert main.main(["--generate", str(out / "checkpoint.pt"), "--device", device]) == 0
    assert {png.name for png in out.glob("*.png")} == {
        "originals.png",
        "reconstructions.png",
        "samples.png",
        "manifold.png",
        "interpolation.png",
        "least_likely.png",
        "latent_map.png",
        "kl_per_dim.png",
    }


@pytest.mark.parametrize("device", DEVICES)
def test_binarized_bernoulli_training_after_training_evaluation(data_dir, tmp_path, capsys, device):
    out = tmp_path / "run"
    assert (
        main.main(
            [
                *QUICK,
                "--device",
                device,
                "--likelihood",
                "bernoulli",
                "--binarize",
                "static",
                "--hidden",
                "64,32,16",
                "--activation",
                "tanh",
                "--eval-k",
                "10",
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = metrics(out)
    assert [row.get("epoch") for row in rows] == [1, 2, 2] and rows[-1]["k"] == 10
    assert rows[-1]["decoder_variance"] is None and "bernoulli pixels" in capsys.readouterr().out
    # a bernoulli likelihood of binary pixels is a probability: log p(x) <= 0, and >= the ELBO
    assert -rows[1]["test_loss"] < rows[-1]["test_log_likelihood"] < 0


@pytest.mark.parametrize("device", DEVICES)
def test_binarization_is_repeatable_for_static_and_fresh_for_dynamic(device):
    from helpers.data import to_pixels

    device = torch.device(device)
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    first = to_pixels(images, device, "static", seed=1)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(first, to_pixels(images, device, "static", seed=1))
    assert not torch.equal(first, to_pixels(images, device, "static", seed=2))
    grey = to_pixels(images, device)
    assert torch.equal(grey.cpu(), images.reshape(50, -1) / 255)
    # dynamic: train_epoch draws fresh binary pixels from the grey ones at every use
    args = flags.parse(["--binarize", "dynamic", "--batch-size", "50"])
    model = models.build_model(args, device)
    seen = []

    def record(model, x):
        seen.append(x)
        return main.loss_function(model, x, args)

    for epoch in range(200):
        optimizer = models.build_optimizer(model, args)
        batches = EpochBatches(grey, args.batch_size, args.binarize, epoch, ThreadTuner(None))
        main.train_epoch(model, optimizer, record, batches)
    assert all(set(x.unique().tolist()) == {0.0, 1.0} for x in seen)
    assert not torch.equal(seen[0].sum(0), seen[1].sum(0))  # each epoch draws anew
    # the mean of binarized pixels follows the intensities (the order is shuffled: compare sums)
    torch.testing.assert_close(
        torch.stack(seen).mean(0).sum(0), grey.sum(0), atol=0.15 * 50, rtol=0
    )


@pytest.mark.parametrize("device", [*DEVICES, "meta"])
def test_static_binarization_draws_the_same_pixels_on_every_device(device, monkeypatch):
    """Static binarization, and the test split's (every binarized run's), draw on a CPU generator
    and then move the pixels to the device: a CPU run and a CUDA run of one seed see the same
    images. `meta` is a device without data that every torch has: pixels drawn on its generator
    (there is none) could not be there at all."""
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    grey = images.reshape(50, -1).float() / 255
    drawn, bernoulli = [], torch.bernoulli  # the devices of each draw: (pixels, generator)

    def recording_bernoulli(input, *args, generator=None, **kwargs):
        drawn.append((input.device.type, generator.device.type))
        return bernoulli(input, *args, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "bernoulli", recording_bernoulli)
    train = data.to_pixels(images, torch.device(device), "static", seed=3)
    test = data.to_test_pixels(images, torch.device(device), "dynamic")
    assert drawn == [("cpu", "cpu")] * 2 and train.device.type == test.device.type == device
    if device != "meta":
        for pixels, seed in ((train, 3), (test, data.TEST_BINARIZATION_SEED)):
            reference = bernoulli(grey, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(pixels.cpu(), reference)


# The Tensor methods that make the host wait for the device: they read a value back.
HOST_SYNCS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero", "cpu")


class StepCounter(ThreadTuner):
    """A thread tuner that only counts steps: EpochBatches calls step() after each."""

    def __init__(self) -> None:
        super().__init__(None)
        self.done = 0

    def step(self) -> None:
        self.done += 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--binarize", "dynamic", "--clip-grad", "1", "--lr-schedule", "cosine"],
        ["--objective", "iwae", "--likelihood", "bernoulli"],
        ["--stl", "--warmup-epochs", "0.5"],
    ],
)
def test_a_training_step_reads_nothing_back_from_the_device(device, options, monkeypatch):
    """A training epoch's host syncs (every call of a Tensor method in HOST_SYNCS) come only at its
    reporting steps, every 50 steps and the last: none in the other steps. (It sees the reads
    made through those methods, from Python; not a sync inside one of torch's own kernels.)"""
    device = torch.device(device)
    args = flags.parse([*options, "--batch-size", "4"])
    args.amp = research.bf16_pays(args.amp, args.hidden, device)  # as main() decides it
    pixels = torch.rand(4 * 129 + 2, 784, device=device)  # 130 steps, the last of 2 images
    model = models.build_model(args, device)
    optimizer = models.build_optimizer(model, args)
    research.adjust_adam_steps(optimizer, args, {"start": 0, "end": args.epochs}, len(pixels), 0)
    loss_fn = research.training_loss(args, main.loss_function)
    steps, syncs = StepCounter(), []

    def counted(name: str):
        method = getattr(torch.Tensor, name)

        def counting(self, *args, **kwargs):
            syncs.append(steps.done)  # the steps finished when it came
            return method(self, *args, **kwargs)

        return counting

    for name in HOST_SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    batches = EpochBatches(pixels, args.batch_size, args.binarize, 1, steps)
    loss = main.train_epoch(model, optimizer, loss_fn, batches)
    monkeypatch.undo()
    assert steps.done == 130 and math.isfinite(loss)
    assert set(syncs) == {50, 100, 130}


@pytest.mark.parametrize("flush", [True, False])
def test_denormals_are_flushed_on_every_worker_thread(flush):
    # Run in a fresh process: worker threads take the setting only when torch starts them.
    script = (
        "import torch\nfrom helpers import startup\n"
        f"{'startup.after_imports()' if flush else ''}\ntorch.set_num_threads(2)\n"
        "tiny = torch.full((1 << 20,), 1e-39) * 1.0  # big enough to be split between the threads\n"
        "print(torch.get_num_threads(), int((tiny != 0).sum()))"
    )
    threads, kept = map(
        int,
        subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.split(),
    )
    assert threads == 2
    assert kept == 0 if flush else kept == 1 << 20


def test_compiled_loss_matches_the_eager_one_and_amp_computes_in_bf16():
    """--compile compiles the training loss (main.loss_function with the model): the same loss
    and gradients as eager, for each setting it reads (a stale guard would reuse the first beta).
    --amp changes the arithmetic a little, compiled or not."""
    from torch._inductor import config as inductor_config

    from vae import VAE

    torch.manual_seed(0)
    model = VAE()
    x = torch.rand(32, 784)
    args, eager_args = flags.parse(["--compile", "--no-amp"]), flags.parse(["--no-amp"])
    args.amp = eager_args.amp = False  # main() turns "off" into False
    compiled = research.training_loss(args, main.loss_function)  # main.py's own way to it
    eager_loss = research.training_loss(eager_args, main.loss_function)

    def loss_and_grads(loss_fn):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same ε for every call
        loss = loss_fn(model, x)
        loss.backward()
        return [loss.detach(), *(p.grad for p in model.parameters())]

    with inductor_config.patch(fallback_random=True):  # the compiled graph draws ε as eager does
        for beta in (1.0, 0.5):
            args.beta = eager_args.beta = beta
            eager = loss_and_grads(eager_loss)
            torch.testing.assert_close(loss_and_grads(compiled), eager, rtol=1e-4, atol=1e-6)
        args.amp = eager_args.amp = True
        amp = loss_and_grads(eager_loss)
        for got, want in zip(loss_and_grads(compiled), amp):  # bf16 roundings differ elementwise
            assert torch.linalg.norm(got - want) < 0.05 * torch.linalg.norm(want)
    assert 0 < abs(amp[0] - eager[0]) < 0.02 * eager[0]


def test_help_and_flag_errors_answer_before_torch_loads():
    for argv in (["--help"], ["--visdom-port", "99999"], ["--epochs", "0"]):
        script = (
            "import runpy, sys\n"
            f"sys.argv = ['main.py', *{argv!r}]\n"
            "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
            "except SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True
        )
        assert result.stdout.splitlines()[-1] == ("0 False" if argv == ["--help"] else "2 False")


def test_help_gives_every_default_zero_included():
    text = " ".join(flags.build_parser().format_help().split())  # argparse wraps the lines
    assert "a fixed seed of its own) (default: 0)" in text  # --seed: 0 is shown
    assert "(default: False)" not in text  # switches have no default to show


def test_the_flags_offer_what_the_model_and_data_know():
    assert set(flags.ACTIVATIONS) == set(vae.ACTIVATIONS)
    assert set(flags.LIKELIHOODS) == set(vae.LIKELIHOODS)
    assert set(flags.DATASETS) == set(data.DATASETS)


# tests/data/checkpoint-564078d.pt: written by the code of commit 564078d (before the helpers
# package), `--epochs 2 --batch-size 64 --num-images 16 --hidden 4 --latent-dim 2 --lr-schedule
# cosine --watch-every 1 --watch-k 5 --watch-images 20` on conftest's tiny data. That code, resumed
# with `--epochs 3 --threads 1`, ended epoch 3 with these losses.
OLD_CHECKPOINT = ROOT / "tests" / "data" / "checkpoint-564078d.pt"
OLD_EPOCH_3 = {"train_loss": 55.452911376953125, "test_loss": 53.96818622946739}


def test_a_checkpoint_of_the_old_layout_resumes_evaluates_and_generates(data_dir, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    shutil.copy(OLD_CHECKPOINT, out / "checkpoint.pt")
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["history"]
    given = ["--data-dir", str(data_dir), "--no-visdom"]
    resume = ["--resume", str(out / "checkpoint.pt"), "--epochs", "3", "--threads", "1", *given]
    assert main.main(resume) == 0
    rows = metrics(out)
    assert rows[:2] == saved and rows[2]["epoch"] == 3
    for key, value in OLD_EPOCH_3.items():  # the same continuation as the old code's
        assert rows[2][key] == pytest.approx(value, rel=1e-4)
    assert main.main(["--evaluate", str(out / "checkpoint.pt"), "--eval-k", "5", *given]) == 0
    assert metrics(out)[-1]["evaluation"] == "importance-weighted" and metrics(out)[-1]["k"] == 5
    assert main.main(["--generate", str(out / "checkpoint.pt"), *given]) == 0
    assert {
        "samples.png",
        "manifold.png",
        "latent_map.png",
        "least_likely.png",
        "kl_per_dim.png",
    } <= {p.name for p in out.iterdir()}


def test_a_run_collects_garbage_again_after_the_imports(data_dir, tmp_path):
    """main.py, run as the script, turns the collector off while torch loads; main() on again."""
    gc.disable()
    try:
        assert main.main([*QUICK, "--data-dir", str(data_dir), "--out", str(tmp_path / "r")]) == 0
        assert gc.isenabled()
    finally:
        gc.enable()
