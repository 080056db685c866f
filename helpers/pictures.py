"""An epoch's pictures, drawn on the CPU: grids of test images, their reconstructions, samples
from the prior, interpolations between test images, the latent traversal (or, with 2 latent
dimensions, the manifold), and the least likely test images; and the PNG files they are written
to, with the latent map and the KL per dimension (latent.py). No Visdom here: visdom_page.py
sends them.
"""

import math
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid, save_image

from helpers.latent import (
    Activity,
    DimensionKL,
    LatentMap,
    dimension_kl,
    image_tensor,
    kl_image,
    latent_map,
    map_image,
)
from helpers.likelihood import TestLoss

TRAVERSAL_ROWS = 10  # at most this many active dimensions in the traversal
LEAST_LIKELY = 16  # the test images with the highest loss shown, in LEAST_LIKELY_COLUMNS columns
LEAST_LIKELY_COLUMNS = 4


@dataclass(frozen=True)
class TestPass:
    """What an epoch's test pass gives the pictures: the latent means of the map's images and
    their activity, and the loss of each test image and the KL of each latent dimension."""

    means: torch.Tensor  # [MAP_IMAGES, d]
    activity: Activity
    loss: TestLoss


def fixed_inputs(args: Namespace, test: torch.Tensor, device: torch.device):
    """The same test images and prior samples every epoch, and the grids' row length."""
    generator = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.num_images, args.latent_dim, generator=generator).to(device)
    return test[: args.num_images], z, max(1, round(math.sqrt(args.num_images)))


def pictures(
    model, inputs, test: torch.Tensor, labels: torch.Tensor, names, epoch: int, tested: TestPass
) -> tuple[dict, LatentMap, DimensionKL]:
    """An epoch's pictures, on the CPU: the grids of the fixed `inputs` (fixed_inputs), the least
    likely of the `test` images (pixels [N, 784]) with their `labels`, the latent map of the
    pass's means and the KL of each latent dimension."""
    images, z, nrow = inputs
    shown = figures(model.eval(), images, z, epoch, nrow, tested.activity)
    shown["least_likely"] = least_likely(test, labels, tested.loss.per_image, epoch)
    latent = latent_map(tested.means, labels, names, tested.activity, epoch)
    return shown, latent, dimension_kl(tested.loss.kl_per_dim, tested.activity, epoch)


def grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images [N,784] or [N,1,28,28] in [0,1] → one uint8 grid image [3,H,W] on the CPU."""
    images = images.detach().float().reshape(-1, 1, 28, 28).cpu()
    return make_grid(images, nrow=nrow, padding=2, pad_value=1.0).mul(255).round().to(torch.uint8)


def save_pngs(
    out: Path,
    grids: dict[str, tuple[torch.Tensor, str]],
    latent: LatentMap | None = None,
    kl: DimensionKL | None = None,
) -> list[str]:
    """Write each grid (name → (uint8 image, title)) to <out>/<name>.png, the latent map (if
    any) to <out>/latent_map.png and the KL bars (if any) to <out>/kl_per_dim.png; returns the
    file names."""
    if latent is not None:
        grids = {**grids, "latent_map": (map_image(latent), latent.title)}
    if kl is not None:
        grids = {**grids, "kl_per_dim": (kl_image(kl), kl.title)}
    for name, (image, _) in grids.items():
        save_image(image.float().div(255), out / f"{name}.png")
    return [f"{name}.png" for name in grids]


def least_likely(
    test: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor, epoch: int
) -> tuple[torch.Tensor, str]:
    """The LEAST_LIKELY test images with the highest loss (the negative ELBO), highest first in
    reading order, each captioned "label: loss" under it: uint8 [3,H,W] and a title.

    Drawn pixel for pixel (28 pixels an image) with PIL, to be shown unzoomed: text blurs.
    """
    order = losses.topk(min(LEAST_LIKELY, losses.shape[0])).indices  # sorted, highest first
    digits = test[order.to(test.device)].float().reshape(-1, 28, 28).mul(255).round()
    digits = digits.to(torch.uint8).cpu().numpy()
    picked = labels[order.to(labels.device)].tolist()
    # a cell: the image, and its caption under it; 4 cells as wide as a window's title bar
    # needs for the title on visdom 0.3 (its bar has more buttons)
    width, height, pad = 48, 28 + 14, 2
    rows = math.ceil(len(order) / LEAST_LIKELY_COLUMNS)
    size = (pad + LEAST_LIKELY_COLUMNS * (width + pad), pad + rows * (height + pad))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=10)
    for i, (index, label) in enumerate(zip(order.tolist(), picked)):
        left = pad + (i % LEAST_LIKELY_COLUMNS) * (width + pad)
        top = pad + (i // LEAST_LIKELY_COLUMNS) * (height + pad)
        image.paste(Image.fromarray(digits[i]).convert("RGB"), (left + (width - 28) // 2, top))
        caption = f"{label}: {float(losses[index]):.1f}"
        draw.text((left + width // 2, top + 29), caption, fill="black", font=font, anchor="mt")
    return image_tensor(image), f"least likely, epoch {epoch}"


def traversal(
    decode, start: torch.Tensor, activity: Activity, epoch: int, steps: int
) -> tuple[torch.Tensor, str]:
    """Rows that sweep one latent dimension each from -3 to 3 around the code `start` [d], a row
    for each of min(TRAVERSAL_ROWS, d) dimensions, largest variance first: the active ones, then
    (where fewer are active) inactive ones, whose rows barely change. The grid has the same size
    every epoch and no empty rows, so its window is full."""
    rows = min(TRAVERSAL_ROWS, activity.dims)
    dims = activity.variance.argsort(descending=True)[:rows].tolist()
    values = torch.linspace(-3.0, 3.0, steps, device=start.device)
    codes = start.repeat(rows, steps, 1)
    for row, dim in enumerate(dims):
        codes[row, :, dim] = values
    tiles = decode(codes.reshape(-1, activity.dims)).reshape(rows, steps, 784)
    count = f"{activity.count} of {activity.dims} dims active"
    if rows < activity.count:
        count = f"top {rows} of {activity.count} active"
    return grid(tiles, steps), f"traversal: {count}, epoch {epoch}"


@torch.inference_mode()
def figures(
    model, images: torch.Tensor, z: torch.Tensor, epoch: int, nrow: int, activity: Activity
) -> dict[str, tuple[torch.Tensor, str]]:
    """The windows a run shows, name → (uint8 grid, title), from fixed test images and fixed
    z ~ N(0, I); the traversal sweeps the dimensions `activity` finds active."""
    mu = model.encode(images)[0]
    decode = lambda codes: torch.sigmoid(model.decode(codes).float())  # noqa: E731
    shown = {
        "originals": (grid(images, nrow), "test images (fixed)"),
        "reconstructions": (grid(decode(mu), nrow), f"reconstructions, epoch {epoch}"),
        "samples": (grid(decode(z), nrow), f"prior samples, epoch {epoch}"),
    }
    steps = 10
    if model.latent_dim == 2:
        quantiles = (
            torch.distributions.Normal(0.0, 1.0)
            .icdf(torch.linspace(0.05, 0.95, steps))
            .to(z.device)
        )
        codes = torch.cartesian_prod(quantiles.flip(0), quantiles)[:, [1, 0]]
        shown["manifold"] = (
            grid(decode(codes), steps),
            f"latent manifold, epoch {epoch}",
        )
    else:
        shown["traversal"] = traversal(decode, mu[0], activity, epoch, steps)
    pairs = min(8, images.shape[0] // 2)  # 8 rows of 8: as big as an 8x8 grid
    weights = torch.linspace(0.0, 1.0, 8, device=z.device)[None, :, None]
    start, end = mu[:pairs, None], mu[pairs : 2 * pairs, None]
    codes = (1 - weights) * start + weights * end
    shown["interpolation"] = (
        grid(decode(codes.reshape(-1, model.latent_dim)), 8),
        f"interpolations, epoch {epoch}",
    )
    return shown
