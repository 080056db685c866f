"""What the latent space learned: active units, a 2-D projection of the latent means, the map.

Pure functions of tensors (and one matplotlib rendering to a uint8 image); no Visdom, no files.
"""

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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
    """The latent map of the means mu [N, d] of N labelled images; its details name the
    projection."""
    points, projection, axis_labels = project_2d(mu)
    details = (
        f"{len(points)} test images: {projection}; {activity.count} of {activity.dims} dims active"
    )
    title = f"latent map, epoch {epoch}"
    return LatentMap(points.cpu(), labels.cpu(), names, title, details, axis_labels)


def map_image(
    latent: LatentMap, size_inches: tuple[float, float] = (7.0, 5.6), dpi: int = 100
) -> torch.Tensor:
    """The map as a scatter coloured by class with a legend, drawn by matplotlib: uint8 [3,H,W]."""
    figure = Figure(figsize=size_inches, dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, name in enumerate(latent.names):
        chosen = latent.labels == index
        if chosen.any():
            xy = latent.points[chosen].numpy()
            axes.scatter(
                xy[:, 0], xy[:, 1], s=6, color=f"C{index % 10}", label=name, alpha=0.7, linewidths=0
            )
    axes.set_xlabel(latent.axis_labels[0])
    axes.set_ylabel(latent.axis_labels[1])
    axes.set_title(f"{latent.title}\n{latent.details}", fontsize=8, wrap=True)
    axes.legend(
        loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2.5, fontsize=8, frameon=False
    )
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()
