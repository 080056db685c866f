"""The latent space: active units, the 2-D projection, the map in Visdom, and explore.py's ends."""

import json
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from conftest import (
    N_TEST,
    OFFLINE_ENV,
    ROOT,
    free_port,
    metrics,
    run_main,
    start_explorer,
    wait_for,
    write_mnist,
)
from explore import IMAGE_WINDOW, build_parser
from explore import load as load_explorer
from helpers import likelihood
from helpers.data import class_names, load_images, to_test_pixels
from helpers.latent import (
    ACTIVE_THRESHOLD,
    Activity,
    active_units,
    dimension_kl,
    kl_image,
    latent_map,
    latent_means,
    project_2d,
)
from helpers.pictures import LEAST_LIKELY, least_likely, traversal
from helpers.visdom_page import Viewer
from vae import VAE, negative_elbo, reparameterize

DEAD = [1, 3, 4]  # latent dimensions whose μ the encoder below never changes


def model_with_dead_dimensions() -> VAE:
    """A VAE whose μ rows DEAD have zero weights (a constant μ: a switched-off dimension) and
    whose other μ rows are scaled up so that they vary with the image."""
    torch.manual_seed(0)
    model = VAE(784, (32,), latent_dim=6)
    last = model.encoder[-1]  # its first 6 outputs are μ
    with torch.no_grad():
        last.weight[:6] *= 20
        last.weight[DEAD] = 0.0
        last.bias[DEAD] = 0.7  # a constant offset is not activity
    return model


def test_active_units_finds_the_dimensions_the_encoder_switched_off():
    images = torch.rand(500, 784)
    activity = active_units(latent_means(model_with_dead_dimensions(), images))
    assert activity.count == 3 and activity.dims == 6
    assert activity.active.tolist() == [u not in DEAD for u in range(6)]
    assert activity.variance[DEAD].eq(0).all() and (activity.variance[[0, 2, 5]] > 0.01).all()
    ranked = activity.ranked(10)
    assert sorted(ranked) == [0, 2, 5]
    assert activity.variance[ranked].argsort(descending=True).tolist() == [0, 1, 2]
    assert activity.ranked(2) == ranked[:2]


def test_the_threshold_is_burdas_0_01():
    base = torch.tensor([-1.0, 1.0]).repeat(50)[:, None]  # variance 1 (population)
    scales = torch.tensor([0.11, 0.09, 0.0])  # variances 0.0121, 0.0081, 0
    activity = active_units(base * scales)
    assert ACTIVE_THRESHOLD == 0.01 and activity.active.tolist() == [True, False, False]
    assert torch.allclose(activity.variance, scales**2)


def test_the_projection_of_a_2d_latent_keeps_its_geometry():
    points = torch.randn(300, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([3, 1])
    same, name, axes = project_2d(points)
    assert torch.equal(same, points) and name == "latent means" and axes == ("z1", "z2")
    # The same plane inside 6 dimensions (a random rotation, an offset): PCA finds it again, so
    # all pairwise distances survive (the projection is the plane up to rotation and reflection).
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))
    embedded = torch.cat([points, torch.zeros(300, 4)], dim=1) @ rotation.T + 5.0
    projected, name, axes = project_2d(embedded)
    assert projected.shape == (300, 2) and axes == ("PC1", "PC2")
    assert name == "PCA of the 6-D means (100% of their variance)"
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(
        torch.cdist(projected, projected, compute_mode=exact),
        torch.cdist(points, points, compute_mode=exact),
        atol=1e-4,
    )
    assert projected[:, 0].var() > projected[:, 1].var()  # PC1 is the long axis


def test_the_traversal_sweeps_the_active_dimensions_first_and_fills_every_row():
    """A row for each dimension, so that the grid keeps its size: the active ones first (most
    variance first), then inactive ones, whose rows barely change; no row is left white."""

    def decode(codes: torch.Tensor) -> torch.Tensor:  # dimension u moves the image by weight[u]
        weight = torch.tensor([1.0, 0.02, 1.0, 0.02]) if codes.shape[-1] == 4 else 1.0
        return torch.sigmoid((codes * weight).sum(-1, keepdim=True).expand(*codes.shape[:-1], 784))

    def tile(image: torch.Tensor, row: int, column: int) -> torch.Tensor:
        return image[:, 2 + 30 * row : 30 * (row + 1), 2 + 30 * column : 30 * (column + 1)]

    def sweep(image: torch.Tensor, row: int) -> float:  # how much a row changes, end to end
        return (tile(image, row, 9).float().mean() - tile(image, row, 0).float().mean()).item()

    variance = torch.tensor([0.5, 0.0, 2.0, 0.001])  # rows: dimensions 2, 0 (active), 3, 1
    image, title = traversal(decode, torch.zeros(4), Activity(variance, variance > 0.01), 3, 10)
    assert title == "traversal: 2 of 4 dims active, epoch 3"
    assert tuple(image.shape) == (3, 2 + 4 * 30, 2 + 10 * 30)
    assert sweep(image, 0) > 200 and sweep(image, 1) > 200  # the active ones sweep
    assert 0 < sweep(image, 2) < 20 and 0 < sweep(image, 3) < 20  # the others barely change
    assert all((tile(image, row, 0) < 255).any() for row in range(4))  # no white row
    image, title = traversal(decode, torch.zeros(4), Activity(variance, variance > 10), 3, 10)
    assert title == "traversal: 0 of 4 dims active, epoch 3"
    assert tuple(image.shape) == (3, 2 + 4 * 30, 2 + 10 * 30)
    variance = torch.linspace(1.0, 2.0, 12)  # 12 active: the 10 most active, every row filled
    image, title = traversal(decode, torch.zeros(12), Activity(variance, variance > 0.01), 3, 10)
    assert title == "traversal: top 10 of 12 active, epoch 3"
    assert tuple(image.shape) == (3, 2 + 10 * 30, 2 + 10 * 30) and (tile(image, 9, 0) < 255).any()


def test_the_test_pass_gives_each_images_loss_and_each_dimensions_kl():
    """test_loss in batches against each image's own −ELBO with the same ε (the seeded draw for
    the whole split): the per-image losses in order, the KL per dimension summing to the KL."""
    model = model_with_dead_dimensions().eval()
    images = torch.rand(300, 784)
    args = Namespace(seed=3, likelihood="gaussian", beta=2.0)
    tested = likelihood.test_loss(
        model, images, args, batch=128
    )  # three batches, the last one short
    generator = torch.Generator().manual_seed(3)
    eps = torch.cat([torch.randn(x.shape[0], 6, generator=generator) for x in images.split(128)])
    with torch.no_grad():
        mu, logvar = model.encode(images)
        logits = model.decode(reparameterize(mu, logvar, eps))
        one = [(logits[[i]], images[[i]], mu[[i]], logvar[[i]]) for i in range(300)]
        expected = torch.stack([negative_elbo(*tensors, beta=2.0)[0] for tensors in one])
        kl_dims = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    torch.testing.assert_close(tested.per_image, expected)
    torch.testing.assert_close(tested.kl_per_dim.float(), kl_dims.mean(0))
    row = tested.metrics()
    assert row["test_kl"] == pytest.approx(float(tested.kl_per_dim.sum()), abs=1e-12)
    assert row["test_loss"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert row["test_kl_per_dim"] == pytest.approx(kl_dims.mean(0).tolist(), abs=1e-4)
    # the dead dimensions (constant μ = 0.7) carry only their constant KL; the bars mark them
    kl = dimension_kl(tested.kl_per_dim, active_units(mu), epoch=4)
    assert kl.active.tolist() == [u not in DEAD for u in range(6)] and kl.title.endswith("epoch 4")
    assert kl.details.startswith(f"sum {row['test_kl']:.2f} nats")
    picture = kl_image(kl)
    assert picture.dtype == torch.uint8 and picture.shape[0] == 3


def test_the_least_likely_are_the_highest_losses_highest_first():
    test = torch.rand(40, 784)
    labels = torch.arange(40) % 10
    losses = torch.randperm(40).float() + 0.25  # all different: one right order
    image, title = least_likely(test, labels, losses, epoch=5)
    assert title == "least likely, epoch 5"
    assert tuple(image.shape) == (3, 2 + 4 * 44, 2 + 4 * 50)  # 4 rows of 4 captioned cells
    order = losses.argsort(descending=True)[:LEAST_LIKELY]
    for i, index in enumerate(order.tolist()):  # cell i holds test image `index`, unscaled
        left, top = 2 + (i % 4) * 50 + 10, 2 + (i // 4) * 44
        shown = image[0, top : top + 28, left : left + 28]
        assert torch.equal(shown, test[index].reshape(28, 28).mul(255).round().to(torch.uint8))
    few, _ = least_likely(test[:3], labels[:3], losses[:3], epoch=5)  # fewer images than cells
    assert tuple(few.shape) == (3, 2 + 44, 2 + 4 * 50)


def test_the_map_reaches_visdom_with_one_trace_per_class(visdom_server, tmp_path):
    names = class_names("fashion-mnist")
    labels = torch.arange(400) % 10
    mu = torch.randn(400, 5) + labels[:, None].float()
    activity = active_units(mu)
    viewer = Viewer(tmp_path, "http://127.0.0.1", visdom_server.port, "map", 5.0, 30.0)
    history = [{"epoch": 1, "train_loss": 2.0, "test_loss": 1.0, "active_units": activity.count}]
    viewer.show({}, history, latent_map(mu, labels, names, activity, epoch=1))
    shown = json.loads(visdom_server.client("map").get_window_data(env="map"))
    traces = shown["latent_map"]["content"]["data"]
    assert [trace["name"] for trace in traces] == names
    assert all(len(trace["x"]) == len(trace["y"]) == 40 for trace in traces)
    assert shown["latent_map"]["title"] == "latent map, epoch 1"
    details = shown["latent_map"]["content"]["layout"]["annotations"][0]["text"]
    assert details.startswith("400 test images: PCA of the 5-D") and "5 of 5 dims active" in details
    assert shown["active_units"]["content"]["data"][0]["y"] == [5]
    assert not (tmp_path / "latent_map.png").exists()  # a server shows it: PNGs at the end
    viewer.save()
    assert (tmp_path / "latent_map.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_and_the_epoch_line_count_the_active_units(data_dir, tmp_path):
    out = tmp_path / "run"
    result = run_main(
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--no-visdom",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = metrics(out)
    assert [type(row["active_units"]) for row in rows] == [int, int]
    for row in rows:
        assert f"epoch {row['epoch']}/2: " in result.stdout
        assert f"{row['active_units']} of 10 latent dims active" in result.stdout
    # The count is the checkpoint's model's, on the test images.
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    model = VAE(784, (256, 64), 10)
    model.load_state_dict(state["model"])
    images = load_images("mnist", data_dir, train=False)
    pixels = to_test_pixels(images, torch.device("cpu"), "none")
    assert active_units(latent_means(model, pixels)).count == rows[-1]["active_units"] > 0


def run_explore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "explore.py"), *args],
        cwd=ROOT,
        timeout=120,
        capture_output=True,
        text=True,
        env={**OFFLINE_ENV, "PATH": ""},
        check=False,
    )


def test_explore_with_a_bad_checkpoint_or_no_server_says_what_to_do(trained_run, tmp_path):
    result = run_explore(str(tmp_path / "missing.pt"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        (
            f"error: checkpoint {tmp_path / 'missing.pt'} does not exist: "
            "give the path of a run's checkpoint.pt"
        )
    ]
    result = run_explore(
        str(trained_run / "checkpoint.pt"),
        "--visdom-server",
        "http://127.0.0.1",
        "--visdom-port",
        str(free_port()),
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "no Visdom server answers" in line and "python -m visdom.server" in line


def test_explore_reads_a_moved_runs_test_images_from_the_default_data_folder(
    trained_run, tmp_path, monkeypatch
):
    """A run looked at on another machine, whose data folder is not there: ./data instead."""
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    state["args"]["data_dir"] = str(tmp_path / "gpu-box" / "data")
    torch.save(state, tmp_path / "checkpoint.pt")
    write_mnist(tmp_path / "laptop" / "data" / "MNIST" / "raw")
    monkeypatch.chdir(tmp_path / "laptop")
    _, means = load_explorer(build_parser().parse_args([str(tmp_path / "checkpoint.pt")]))
    assert means.shape == (N_TEST, 10)


@pytest.mark.parametrize("ending", ["ctrl-c", "server gone"])
def test_explore_ends_cleanly_on_ctrl_c_and_when_the_server_goes_away(
    ending, trained_run, visdom_server
):
    explorer = start_explorer(trained_run / "checkpoint.pt", visdom_server, "explore")
    try:
        wait_for(
            lambda: (
                IMAGE_WINDOW
                in json.loads(visdom_server.client("explore").get_window_data(env="explore"))
            ),
            "the explorer's image",
            explorer,
        )
        if ending == "ctrl-c":
            explorer.send_signal(2)  # SIGINT
        else:
            visdom_server.stop()
        stdout, stderr = explorer.communicate(timeout=60)  # a safety limit, not a measurement
    finally:
        if explorer.poll() is None:
            explorer.kill()
            explorer.communicate()
    assert "Traceback" not in stderr, stderr
    assert "Ctrl-C stops it" in stdout
    if ending == "ctrl-c":
        assert explorer.returncode == 0 and "explorer stopped (Ctrl-C)" in stdout
    else:
        assert explorer.returncode == 1 and "went away: explorer stopped" in stderr
