"""An epoch's pictures, drawn on the CPU: grids of test images, their reconstructions, samples
from the prior, interpolations between test images, and the latent traversal (or, with 2 latent
dimensions, the manifold); and the PNG files they are written to, with the latent map
(latent.py). No Visdom here: visdom_page.py sends them.
"""

import math
from argparse import Namespace
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from helpers.latent import Activity, LatentMap, latent_map, map_image

TRAVERSAL_ROWS = 10  # at most this many active dimensions in the traversal


def fixed_inputs(args: Namespace, test: torch.Tensor, device: torch.device):
    """The same test images and prior samples every epoch, and the grids' row length."""
    generator = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.num_images, args.latent_dim, generator=generator).to(device)
    return test[: args.num_images], z, max(1, round(math.sqrt(args.num_images)))


def pictures(
    model, inputs, labels: torch.Tensor, names: list[str], epoch: int, means, activity: Activity
) -> tuple[dict, LatentMap]:
    """An epoch's pictures, on the CPU: the grids of the fixed `inputs` (fixed_inputs) and the
    latent map of `means`, the test images' latent means with their `labels`."""
    images, z, nrow = inputs
    shown = figures(model.eval(), images, z, epoch, nrow, activity)
    return shown, latent_map(means, labels, names, activity, epoch)


def grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images [N,784] or [N,1,28,28] in [0,1] → one uint8 grid image [3,H,W] on the CPU."""
    images = images.detach().float().reshape(-1, 1, 28, 28).cpu()
    return make_grid(images, nrow=nrow, padding=2, pad_value=1.0).mul(255).round().to(torch.uint8)


def save_pngs(
    out: Path, grids: dict[str, tuple[torch.Tensor, str]], latent: LatentMap | None = None
) -> list[str]:
    """Write each grid (name → (uint8 image, title)) to <out>/<name>.png, and the latent map (if
    any) to <out>/latent_map.png; returns the file names."""
    if latent is not None:
        grids = {**grids, "latent_map": (map_image(latent), latent.title)}
    for name, (image, _) in grids.items():
        save_image(image.float().div(255), out / f"{name}.png")
    return [f"{name}.png" for name in grids]


def traversal(
    decode, start: torch.Tensor, activity: Activity, epoch: int, steps: int
) -> tuple[torch.Tensor, str]:
    """Rows that sweep each active dimension (largest variance first, at most TRAVERSAL_ROWS)
    from -3 to 3 around the code `start` [d]; with none active, the one image every code gives.

    The grid has the same size every epoch, a row for each of min(TRAVERSAL_ROWS, d)
    dimensions: the rows that no active dimension fills are white.
    """
    rows = min(TRAVERSAL_ROWS, activity.dims)
    dims = activity.ranked(rows)
    tiles = torch.ones(rows, steps, 784, device=start.device)
    if not dims:
        tiles[0, 0] = decode(start[None]).reshape(784)
        return grid(tiles, steps), f"traversal: 0 of {activity.dims} dims active, epoch {epoch}"
    values = torch.linspace(-3.0, 3.0, steps, device=start.device)
    codes = start.repeat(len(dims), steps, 1)
    for row, dim in enumerate(dims):
        codes[row, :, dim] = values
    tiles[: len(dims)] = decode(codes.reshape(-1, activity.dims)).reshape(len(dims), steps, 784)
    count = f"{activity.count} of {activity.dims} dims active"
    if len(dims) < activity.count:
        count = f"top {len(dims)} of {activity.count} active"
    return grid(tiles, steps), f"traversal: {count}, -3..3, epoch {epoch}"


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
        "samples": (grid(decode(z), nrow), f"samples from the prior, epoch {epoch}"),
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
            f"latent manifold (prior quantiles), epoch {epoch}",
        )
    else:
        shown["traversal"] = traversal(decode, mu[0], activity, epoch, steps)
    pairs = min(8, images.shape[0] // 2)  # 8 rows: as tall as an 8x8 grid
    weights = torch.linspace(0.0, 1.0, steps, device=z.device)[None, :, None]
    start, end = mu[:pairs, None], mu[pairs : 2 * pairs, None]
    codes = (1 - weights) * start + weights * end
    shown["interpolation"] = (
        grid(decode(codes.reshape(-1, model.latent_dim)), steps),
        f"interpolations, epoch {epoch}",
    )
    return shown
