"""What the latent space learned: active units, a 2-D projection of the latent means, the map,
and the KL each dimension carries.

Pure functions of tensors (and the map and the KL bars drawn as uint8 images); no Visdom, no
files.
"""

import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2015: dimension u is active when Cov_x(E_q(z|x)[z_u]) > 0.01
MAP_IMAGES = 2000  # the first this many test images are the map's points and the activity's sample


@dataclass(frozen=True)
class Activity:
    """Per latent dimension: the variance over images of its mean E_q(z|x)[z_u], and if active."""

    variance: torch.Tensor  # [d]
    active: torch.Tensor  # [d] bool

    @property
    def count(self) -> int:
        return int(self.active.sum())

    @property
    def dims(self) -> int:
        return self.variance.shape[0]

    def ranked(self, cap: int) -> list[int]:
        """The active dimensions by decreasing variance, at most `cap` of them."""
        order = self.variance.argsort(descending=True)
        return [int(u) for u in order if self.active[u]][:cap]


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> Activity:
    """Activity of each dimension from the latent means mu [N, d] of N images."""
    variance = mu.float().var(dim=0, correction=0)
    return Activity(variance=variance, active=variance > threshold)


@torch.inference_mode()
def latent_means(model, pixels: torch.Tensor, batch: int = 5000) -> torch.Tensor:
    """E_q(z|x)[z] = μ(x) for every image in pixels [N, 784], in eval mode: [N, d]."""
    model.eval()
    return torch.cat([model.encode(x)[0] for x in pixels.split(batch)]).float()


def project_2d(mu: torch.Tensor) -> tuple[torch.Tensor, str, tuple[str, str]]:
    """Points [N, 2] for a scatter of the means mu [N, d], a name for the title and axis labels.

    d = 2: the means themselves; d > 2: their projection on the first two principal components
    (the SVD of the centred means, each component's sign fixed so that maps of later epochs do
    not flip); d = 1: the means against zero.
    """
    d = mu.shape[1]
    if d == 1:
        return torch.cat([mu, torch.zeros_like(mu)], dim=1), "latent means (1-D)", ("z1", "")
    if d == 2:
        return mu.clone(), "latent means", ("z1", "z2")
    centred = mu - mu.mean(dim=0)
    _, singular, components = torch.linalg.svd(centred, full_matrices=False)
    axes = components[:2]  # [2, d]
    strongest = axes.abs().argmax(dim=1)
    axes = axes * axes[torch.arange(2), strongest].sign()[:, None]
    explained = singular[:2].pow(2).sum() / singular.pow(2).sum().clamp_min(1e-12)
    name = f"PCA of the {d}-D means ({100 * explained:.0f}% of their variance)"
    return centred @ axes.T, name, ("PC1", "PC2")


@dataclass(frozen=True)
class LatentMap:
    """The map of one epoch: 2-D points, their class indices (0-based), class names, a short
    title, the details (images, projection, active dimensions) and the axis labels."""

    points: torch.Tensor  # [N, 2]
    labels: torch.Tensor  # [N] int, 0..len(names)-1
    names: list[str]
    title: str
    details: str
    axis_labels: tuple[str, str]


def latent_map(
    mu: torch.Tensor, labels: torch.Tensor, names: list[str], activity: Activity, epoch: int
) -> LatentMap:
    """The latent map of the means mu [N, d] of the first N images of `labels`; its details name
    the projection."""
    points, projection, axis_labels = project_2d(mu)
    labels = labels[: len(points)]
    details = (
        f"{len(points)} test images: {projection}; {activity.count} of {activity.dims} dims active"
    )
    title = f"latent map, epoch {epoch}"
    return LatentMap(points.cpu(), labels.cpu(), names, title, details, axis_labels)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image drawn here as a uint8 tensor [3,H,W], as the grids are."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


# matplotlib's tab10, one colour per class
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def map_image(latent: LatentMap, size: tuple[int, int] = (700, 560)) -> torch.Tensor:
    """The map as a scatter coloured by class, with a legend, axis labels and the title wrapped
    above: uint8 [3,H,W], drawn with PIL (milliseconds, where matplotlib takes a tenth of a
    second and as long again to import)."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    lines = [latent.title, *textwrap.wrap(latent.details, width=90)]
    top, left, right, bottom = 24 + 17 * len(lines), 50, width - 120, height - 40
    for i, line in enumerate(lines):
        draw.text((width // 2, 12 + 17 * i), line, fill="black", font=font, anchor="mt")
    draw.rectangle((left, top, right, bottom), outline="black")
    draw.text(((left + right) // 2, height - 12), latent.axis_labels[0], "black", font, "ms")
    draw.text((22, (top + bottom) // 2), latent.axis_labels[1], "black", font, "mm")
    points = latent.points.float()
    low, high = points.min(dim=0).values, points.max(dim=0).values
    span = (high - low).clamp_min(1e-9)
    inner = torch.tensor([right - left - 16.0, bottom - top - 16.0])
    xy = (points - low) / span * inner + torch.tensor([left + 8.0, 0.0])
    xy[:, 1] = bottom - 8.0 - xy[:, 1]  # y grows upwards
    for (x, y), label in zip(xy.tolist(), latent.labels.tolist()):
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=PALETTE[label % len(PALETTE)])
    for index, name in enumerate(latent.names):
        y = top + 10 + 20 * index
        draw.ellipse((right + 14, y - 4, right + 22, y + 4), fill=PALETTE[index % len(PALETTE)])
        draw.text((right + 30, y), name, fill="black", font=font, anchor="lm")
    return image_tensor(image)


@dataclass(frozen=True)
class DimensionKL:
    """The KL of each latent dimension on the test images (nats, mean per image), which of them
    are active, a short title and the details."""

    nats: torch.Tensor  # [d]
    active: torch.Tensor  # [d] bool
    title: str
    details: str


def dimension_kl(kl_per_dim: torch.Tensor, activity: Activity, epoch: int) -> DimensionKL:
    """The KL bars of an epoch: `kl_per_dim` [d] from the test pass, marked by `activity`."""
    details = f"sum {kl_per_dim.sum():.2f} nats; grey: inactive"  # the sum: the test KL
    return DimensionKL(
        kl_per_dim.float().cpu(), activity.active.cpu(), f"KL per dim, epoch {epoch}", details
    )


ACTIVE_COLOUR, INACTIVE_COLOUR = "#1f77b4", "#b0b0b0"  # plotly's first colour, and grey


def kl_image(kl: DimensionKL, size: tuple[int, int] = (480, 300)) -> torch.Tensor:
    """The KL bars drawn with PIL, the active dimensions blue, the others grey, the title and
    details above and the largest value on the y axis: uint8 [3,H,W]."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    for i, line in enumerate((kl.title, kl.details)):
        draw.text((width // 2, 12 + 17 * i), line, fill="black", font=font, anchor="mt")
    top, left, right, bottom = 60, 60, width - 15, height - 40
    draw.rectangle((left, top, right, bottom), outline="black")
    peak = max(float(kl.nats.max()), 1e-9)
    draw.text((left - 6, top), f"{peak:.2f}", "black", font, "rm")
    draw.text((left - 6, bottom), "0", "black", font, "rm")
    draw.text((18, (top + bottom) // 2), "nats", "black", font, "mm")
    draw.text(((left + right) // 2, height - 12), "latent dimension", "black", font, "ms")
    dims = kl.nats.shape[0]
    step = (right - left) / dims
    for u, (nats, active) in enumerate(zip(kl.nats.tolist(), kl.active.tolist())):
        x0, x1 = left + step * (u + 0.15), left + step * (u + 0.85)
        y = bottom - (bottom - top) * max(nats, 0.0) / peak
        draw.rectangle((x0, y, x1, bottom), fill=ACTIVE_COLOUR if active else INACTIVE_COLOUR)
        if dims <= 20 or (u + 1) % 5 == 0:  # the number, grey for an inactive dimension
            colour = "black" if active else INACTIVE_COLOUR
            draw.text(((x0 + x1) / 2, bottom + 4), str(u + 1), colour, font, "mt")
    return image_tensor(image)
