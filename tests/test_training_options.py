"""Training options: the IW objective, sticking the landing, lr schedules, clipping, the watched
log-likelihood, their flags, and resuming with them on."""

import json
import math
import signal
import subprocess
import sys

import pytest
import torch

import main
from conftest import QUICK, ROOT, metrics, visdom_flags
from helpers import flags, models, research, schedules
from helpers.batches import EpochBatches
from helpers.likelihood import _log_normal, importance_weighted_log_likelihood, negative_iw_bound
from helpers.threads import ThreadTuner
from test_main import without_timings
from test_viewer import windows
from vae import VAE, negative_elbo, reconstruction_loss, reparameterize


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 784, generator=generator) * 0.6, generator=generator)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_iw_bound_with_k1_is_the_negative_elbo_for_the_same_eps(likelihood):
    """k = 1: the same reconstruction term as negative_elbo for the same ε, the KL estimated at that
    one z (log q − log p) instead of in closed form; over many ε the two agree."""
    torch.manual_seed(0)
    model, x = VAE(hidden=(64,), latent_dim=4), binary_images(8).repeat(2500, 1)
    mu, logvar = model.encode(x)
    eps = torch.randn(1, *mu.shape)
    z = reparameterize(mu, logvar, eps[0])
    recon = reconstruction_loss(model.decode(z), x, likelihood)
    one_sample_kl = _log_normal(z, mu, logvar) - _log_normal(z, 0 * z, 0 * z)
    iw = negative_iw_bound(model, x, 1, likelihood, eps=eps)
    torch.testing.assert_close(iw, (recon + one_sample_kl).mean())
    elbo = negative_elbo(model.decode(z), x, mu, logvar, likelihood=likelihood)[0]
    spread = one_sample_kl.std() / math.sqrt(x.shape[0])  # the Monte Carlo KL's standard error
    assert abs(iw - elbo) < 4 * spread


def test_iw_bound_rises_with_k_and_stays_below_the_estimate_with_more_samples():
    torch.manual_seed(0)
    model, x = VAE(hidden=(64,), latent_dim=4), binary_images(256)
    bounds = [-negative_iw_bound(model, x, k, "bernoulli").item() for k in (1, 5, 50)]
    assert bounds[0] < bounds[1] < bounds[2]
    estimate = importance_weighted_log_likelihood(model, x, 1000, "bernoulli").mean().item()
    assert bounds[2] < estimate


@pytest.mark.parametrize("k", [1, 5])
def test_sticking_the_landing_changes_only_the_encoders_gradient(k):
    torch.manual_seed(0)
    model, x = VAE(hidden=(32,), latent_dim=3), binary_images(16)
    eps = torch.randn(k, 16, 3)

    def loss_and_grads(stl: bool):
        model.zero_grad(set_to_none=True)
        loss = negative_iw_bound(model, x, k, "bernoulli", stl=stl, eps=eps)
        loss.backward()
        grads = lambda part: [p.grad.clone() for p in part.parameters()]  # noqa: E731
        return loss.detach(), grads(model.encoder), grads(model.decoder)

    (loss, encoder, decoder), (stl_loss, stl_encoder, stl_decoder) = map(loss_and_grads, (0, 1))
    assert loss == stl_loss
    torch.testing.assert_close(stl_decoder, decoder)
    assert all(not torch.allclose(a, b) for a, b in zip(encoder, stl_encoder, strict=True))


def test_dreg_gradients_average_to_the_iwae_bounds_and_sticking_the_landings_do_not():
    """Over many ε, DReG's encoder gradient averages to the IWAE bound's own (unbiased, Tucker et
    al. 2018); STL's does not for k > 1. The decoder's gradient is the bound's, ε for ε; with k = 1
    DReG is STL."""
    torch.manual_seed(0)
    model, x = VAE(hidden=(32,), latent_dim=3), binary_images(8).repeat(4000, 1)

    def gradients(k: int, **estimator) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same ε for each estimator
        negative_iw_bound(model, x, k, "bernoulli", **estimator).backward()
        flat = lambda part: torch.cat([p.grad.flatten() for p in part.parameters()])  # noqa: E731
        return flat(model.encoder), flat(model.decoder)

    (iwae, decoder), (dreg, dreg_decoder), (stl, _) = (
        gradients(5, **estimator) for estimator in ({}, {"dreg": True}, {"stl": True})
    )
    distance = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert distance(dreg, iwae) < 0.1 and distance(stl, iwae) > 0.3
    torch.testing.assert_close(dreg_decoder, decoder)
    torch.testing.assert_close(gradients(1, dreg=True), gradients(1, stl=True))


def test_batch_loss_follows_the_objective_flags():
    torch.manual_seed(0)
    model, x = VAE(hidden=(32,), latent_dim=3), binary_images(16)

    def seeded(compute) -> float:
        torch.manual_seed(1)
        return compute().item()

    def loss(*argv: str) -> float:
        args = flags.parse(["--likelihood", "bernoulli", *argv])
        args.amp = research.bf16_pays(args.amp, args.hidden, torch.device("cpu"))  # as main()
        return seeded(lambda: research.training_loss(args, main.loss_function)(model, x))

    def elbo():
        logits, mu, logvar = model(x)
        return negative_elbo(logits, x, mu, logvar, likelihood="bernoulli")[0]

    assert loss() == seeded(elbo)
    iwae = seeded(lambda: negative_iw_bound(model, x, 7, "bernoulli"))
    assert loss("--objective", "iwae", "--train-k", "7") == iwae
    assert loss("--objective", "iwae", "--train-k", "7", "--dreg") == iwae  # its gradient differs
    assert loss("--stl") == seeded(lambda: negative_iw_bound(model, x, 1, "bernoulli"))


def lr_per_epoch(argv: list[str], epochs: int, start: int = 0) -> list[float]:
    args = flags.parse([*argv, "--lr", "1e-3", "--epochs", str(epochs)])
    span = {"start": start, "end": epochs}
    return [schedules.scheduled_lr(args, span, epoch) for epoch in range(start + 1, epochs + 1)]


def test_learning_rate_schedules_per_epoch():
    assert lr_per_epoch([], 4) == [1e-3] * 4
    cosine = lr_per_epoch(["--lr-schedule", "cosine", "--lr-floor", "0.1"], 4)
    expected = [1e-4 + 9e-4 * (1 + math.cos(math.pi * t / 4)) / 2 for t in (1, 2, 3, 4)]
    assert cosine == pytest.approx(expected) and cosine[-1] == pytest.approx(1e-4)
    exponential = lr_per_epoch(["--lr-schedule", "exponential", "--lr-floor", "0.01"], 3)
    assert exponential == pytest.approx([1e-3 * 0.01 ** (1 / 3), 1e-3 * 0.01 ** (2 / 3), 1e-5])
    # Burda et al.: 1e-3·10^(-i/7) for 3^i epochs: 1 epoch at i=0, 3 at i=1, 9 at i=2, ...
    burda = lr_per_epoch(["--lr-schedule", "burda"], 14)
    stages = [0, 1, 1, 1, *[2] * 9, 3]
    assert burda == pytest.approx([1e-3 * 10 ** (-i / 7) for i in stages])
    # warm-up: linear from 0 over 2 epochs, then the cosine over the 2 epochs left
    warm = lr_per_epoch(["--lr-schedule", "cosine", "--lr-floor", "0.5", "--warmup-epochs", "2"], 4)
    assert warm == pytest.approx([5e-4, 1e-3, 7.5e-4, 5e-4])
    args = flags.parse(["--lr-schedule", "cosine", "--warmup-epochs", "2"])
    assert schedules.scheduled_lr(args, {"start": 0, "end": 4}, 0.5) == pytest.approx(2e-3 / 4)
    # a schedule set at a later epoch (a resume that gave --lr-schedule) runs from there
    assert lr_per_epoch(["--lr-schedule", "exponential"], 5, start=3) == pytest.approx([1e-4, 1e-5])
    # after its end, the floor
    assert schedules.scheduled_lr(
        flags.parse(["--lr-schedule", "cosine"]), {"start": 0, "end": 2}, 7
    ) == pytest.approx(2e-3 * 0.01)


def test_clipping_bounds_the_gradient_norm_of_every_step():
    torch.manual_seed(0)
    pixels = binary_images(256)

    def step_norms(*argv: str) -> list[float]:
        args = flags.parse(["--likelihood", "bernoulli", "--batch-size", "32", *argv])
        args.amp = research.bf16_pays(args.amp, args.hidden, torch.device("cpu"))  # as main()
        model = models.build_model(args, torch.device("cpu"))
        optimizer = models.build_optimizer(model, args)
        norms = []

        def record_norm(*_) -> None:
            gradients = torch.stack([p.grad.norm() for p in model.parameters()])
            norms.append(torch.linalg.vector_norm(gradients).item())

        research.adjust_adam_steps(optimizer, args, {"start": 0, "end": 1}, len(pixels), 0)
        optimizer.register_step_pre_hook(record_norm)  # after the clipping hook, if any
        loss_fn = research.training_loss(args, main.loss_function)
        batches = EpochBatches(pixels, args.batch_size, args.binarize, 1, ThreadTuner(None))
        main.train_epoch(model, optimizer, loss_fn, batches)
        return norms

    assert max(step_norms()) > 10
    assert max(step_norms("--clip-grad", "10")) <= 10 * (1 + 1e-5)


def test_adam_eps_and_decoder_activation_reach_the_optimizer_and_model():
    args = flags.parse(["--adam-eps", "1e-4", "--decoder-activation", "leaky_relu"])
    model = models.build_model(args, torch.device("cpu"))
    assert models.build_optimizer(model, args).param_groups[0]["eps"] == 1e-4
    assert isinstance(model.encoder[1], torch.nn.ReLU)
    assert isinstance(model.decoder[1], torch.nn.LeakyReLU)
    plain = VAE().state_dict()  # the checkpoint format does not change
    shapes = lambda state: {k: v.shape for k, v in state.items()}  # noqa: E731
    assert shapes(model.state_dict()) == shapes(plain)


def test_the_defaults_train_as_before():
    args = flags.parse([])
    schedule = (args.lr_schedule, args.warmup_epochs, args.adam_eps, args.clip_grad)
    assert schedule == ("constant", 0, 1e-8, None)
    objective = (args.objective, args.stl, args.watch_every, args.decoder_activation)
    assert objective == ("elbo", False, 0, None)


def test_bf16_is_on_where_it_is_native_and_the_model_wide_enough(data_dir, tmp_path, capsys):
    cpu = torch.device("cpu")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # this CPU's oneDNN has bf16 kernels
    wide, narrow = [flags.AMP_MIN_WIDTH] * 2, [flags.AMP_MIN_WIDTH, flags.AMP_MIN_WIDTH - 1]
    parsed = [flags.parse(argv).amp for argv in ([], ["--amp"], ["--no-amp"], ["--amp", "off"])]
    assert parsed == ["auto", "on", "off", "off"]
    assert research.bf16_pays("auto", wide, cpu) is native
    assert research.bf16_pays("auto", narrow, cpu) is False
    assert research.bf16_pays("auto", flags.parse([]).hidden, cpu) is False  # the tutorial's
    assert (research.bf16_pays("on", narrow, cpu), research.bf16_pays("off", wide, cpu)) == (
        True,
        False,
    )
    # a run says so in its first line, and trains in bf16 (a float32 run differs)
    hidden = ["--hidden", f"{flags.AMP_MIN_WIDTH},{flags.AMP_MIN_WIDTH}", "--epochs", "1"]
    losses = {}
    for amp in ("auto", "off"):
        out = tmp_path / amp
        common = [*QUICK, *hidden, "--data-dir", str(data_dir), "--threads", "1"]
        assert main.main([*common, "--amp", amp, "--out", str(out)]) == 0
        first_line = capsys.readouterr().out.splitlines()[0]
        assert ("bf16 autocast" in first_line) is (native and amp == "auto")
        losses[amp] = metrics(out)[0]["train_loss"]
    assert (losses["auto"] != losses["off"]) is native


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--lr-floor", "0"], "--lr-floor: must be greater than 0"),
        (["--lr-floor", "1.5"], "--lr-floor: must be at most 1"),
        (["--lr-schedule", "linear"], "--lr-schedule: invalid choice"),
        (["--adam-eps", "0"], "--adam-eps: must be greater than 0"),
        (["--clip-grad", "-1"], "--clip-grad: must be greater than 0"),
        (["--train-k", "0"], "--train-k: must be greater than 0"),
        (["--watch-every", "-1"], "--watch-every: must be at least 0"),
        (["--watch-k", "x"], "--watch-k: 'x' is not a int"),
        (["--objective", "iwae", "--beta", "0.5"], "only with --beta 1"),
        (["--stl", "--beta", "2"], "only with --beta 1"),
        (["--dreg"], "--dreg is a gradient of the IWAE bound: give it with --objective iwae"),
        (["--warmup-epochs", "3", "--epochs", "3"], "--warmup-epochs 3.0 must be below --epochs 3"),
    ],
)
def test_bad_training_flags_are_one_line_errors(argv, words, data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main.main([*argv, "--data-dir", str(data_dir), "--out", str(tmp_path / "run")])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and words in error[0], error
    assert not (tmp_path / "run").exists()


OPTIONS = [
    "--batch-size",
    "64",
    "--no-visdom",
    "--likelihood",
    "bernoulli",
    "--binarize",
    "dynamic",
    "--hidden",
    "64,32",
    "--decoder-activation",
    "leaky_relu",
    "--lr-schedule",
    "cosine",
    "--warmup-epochs",
    "0.5",
    "--adam-eps",
    "1e-4",
    "--clip-grad",
    "5",
    "--objective",
    "iwae",
    "--train-k",
    "3",
    "--stl",
    "--watch-every",
    "1",
    "--watch-k",
    "5",
    "--watch-images",
    "50",
]


def stop_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C while epoch `epoch`'s checkpoint is written: the run keeps that epoch and stops."""
    save = torch.save

    def save_then_stop(state, file):
        if state["epoch"] == epoch:
            signal.raise_signal(signal.SIGINT)
        save(state, file)

    monkeypatch.setattr(torch, "save", save_then_stop)


def test_resumed_run_with_every_option_ends_like_an_uninterrupted_one(
    data_dir, tmp_path, monkeypatch
):
    # bit-identical with a fixed thread count (README); --threads is each invocation's
    argv = [*OPTIONS, "--data-dir", str(data_dir), "--epochs", "3", "--threads", "1"]
    assert main.main([*argv, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as patch:
        stop_after_epoch(patch, 1)
        assert main.main([*argv, "--out", str(tmp_path / "parts")]) == 130
    assert [row["epoch"] for row in metrics(tmp_path / "parts")] == [1]
    resume = ["--resume", str(tmp_path / "parts" / "checkpoint.pt"), "--threads", "1"]
    assert main.main(resume) == 0
    rows = metrics(tmp_path / "whole")
    assert without_timings(metrics(tmp_path / "parts")) == without_timings(rows)
    assert rows[0]["lr"] > rows[1]["lr"] > rows[2]["lr"] == pytest.approx(2e-3 * 0.01)
    assert all(row["watch_k"] == 5 and row["watch_images"] == 50 for row in rows)
    assert rows[-1]["watch_nll"] < rows[0]["watch_nll"]
    saved = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    assert saved["lr_schedule"] == {"start": 0, "end": 3}


def test_a_checkpoint_without_a_schedule_resumes_at_a_constant_lr_or_starts_one(data_dir, tmp_path):
    """Checkpoints from before the schedule flags have no lr_schedule and none of the new flags:
    they resume at their constant lr; given --lr-schedule, the decay runs from their epoch."""
    out = tmp_path / "old"
    assert (
        main.main(
            [
                "--batch-size",
                "64",
                "--no-visdom",
                "--data-dir",
                str(data_dir),
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    new_flags = {
        "lr_schedule",
        "lr_floor",
        "warmup_epochs",
        "adam_eps",
        "clip_grad",
        "objective",
        "train_k",
        "stl",
        "decoder_activation",
        "watch_every",
        "watch_k",
        "watch_images",
    }
    state["args"] = {k: v for k, v in state["args"].items() if k not in new_flags}
    del state["lr_schedule"]
    torch.save(state, out / "checkpoint.pt")
    torch.save(state, tmp_path / "old-copy.pt")
    assert main.main(["--resume", str(out / "checkpoint.pt"), "--epochs", "2"]) == 0
    assert [row["lr"] for row in metrics(out)] == [2e-3, 2e-3]
    assert (
        main.main(
            [
                "--evaluate",
                str(tmp_path / "old-copy.pt"),
                "--eval-k",
                "5",
                "--out",
                str(tmp_path / "evaluated"),
            ]
        )
        == 0
    )
    again = tmp_path / "again"
    again.mkdir()
    torch.save(state, again / "checkpoint.pt")
    assert (
        main.main(
            [
                "--resume",
                str(again / "checkpoint.pt"),
                "--epochs",
                "3",
                "--lr-schedule",
                "exponential",
            ]
        )
        == 0
    )
    assert [row["lr"] for row in metrics(again)] == pytest.approx([2e-3, 2e-4, 2e-5])
    assert json.loads((again / "args.json").read_text())["lr_schedule"] == "exponential"


def test_resume_keeps_the_schedule_beyond_its_end_at_the_floor(data_dir, tmp_path):
    argv = [
        "--batch-size",
        "64",
        "--no-visdom",
        "--data-dir",
        str(data_dir),
        "--lr-schedule",
        "exponential",
        "--lr-floor",
        "0.1",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main.main(argv) == 0
    assert main.main(["--resume", str(tmp_path / "run" / "checkpoint.pt"), "--epochs", "3"]) == 0
    lrs = [row["lr"] for row in metrics(tmp_path / "run")]
    assert lrs == pytest.approx([2e-3 * 0.1**0.5, 2e-4, 2e-4])


def test_the_watched_log_likelihood_reaches_the_visdom_loss_pane(visdom_server, data_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main.main(
            [
                "--epochs",
                "4",
                "--batch-size",
                "64",
                "--num-images",
                "16",
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
                "--likelihood",
                "bernoulli",
                "--watch-every",
                "2",
                "--watch-k",
                "5",
                "--watch-images",
                "32",
                *visdom_flags(visdom_server, "watch"),
            ]
        )
        == 0
    )
    rows = metrics(out)
    assert ["watch_nll" in row for row in rows] == [False, True, False, True]
    traces = windows(visdom_server, "watch")["loss"]["content"]["data"]
    lines = {trace["name"]: trace for trace in traces}
    assert lines["train"]["x"] == lines["test"]["x"] == [1, 2, 3, 4]
    watched = lines["test −log p(x), k=5, 32 images"]
    assert watched["x"] == [2, 4]
    assert watched["y"] == pytest.approx([rows[1]["watch_nll"], rows[3]["watch_nll"]])


def test_the_plot_tool_draws_the_watched_curve_and_the_final_estimate(data_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main.main(
            [
                *QUICK,
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
                "--likelihood",
                "bernoulli",
                "--watch-every",
                "1",
                "--watch-k",
                "5",
                "--eval-k",
                "7",
            ]
        )
        == 0
    )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "plot_watch.py"),
            str(out),
            "--out",
            str(tmp_path / "nll.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    best = min(row["watch_nll"] for row in metrics(out) if "watch_nll" in row)
    final = metrics(out)[-1]["test_nll"]
    assert f"within 30 min, best watched {best:.2f}; evaluated {final:.2f} (k=7)" in result.stdout
    assert (tmp_path / "nll.png").stat().st_size > 0
