"""Showing a run: image grids and the loss plot to a Visdom server, and the grids as PNG files.

The Visdom client has no timeouts of its own, so every request here has one. A server that is
down or stops answering costs at most one timeout; the run then goes on without it, writes the
pictures as PNG files every epoch, and tries the server again at a later epoch. While a server
shows them, the PNG files are written once, at the end (or when the run is stopped).
"""

import logging
import math
import os
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from helpers.flags import python_command
from helpers.latent import ACTIVE_THRESHOLD, Activity, LatentMap, latent_map, map_image

START_SERVER = f"{python_command()} -m visdom.server -bind_local"
TRAVERSAL_ROWS = 10  # at most this many active dimensions in the traversal

# The page: three rows, the same at every width from 1280 to 1920 pixels. Visdom packs windows
# in rows, in the order of their first messages, and again whenever one changes size, so every
# window keeps the size of its first message; show() sends the pictures of the model's outputs
# first (test images, reconstructions, prior samples, interpolations), then the curves (loss,
# active units), then the latent space (map, traversal or manifold). Each row fits in 1255
# pixels (1280 less a scrollbar), and the first window of the next row is too wide to join it
# even at 1920: a reloaded page places its windows in a 1280-pixel grid until it has measured
# its width, and one past that grid's edge stays where the grid moved it.
OUTPUTS = ("originals", "reconstructions", "samples", "interpolation")
# Plot panes (width, height) in pixels; a plot's height is 15·n - 24: Visdom's grid rows are 15
# pixels (with their margin) and its title bar 14, so that the plot fills whole rows.
LOSS_SIZE, ACTIVE_SIZE, MAP_SIZE = (900, 261), (320, 261), (700, 441)
MIN_SIDE = 240  # a smaller grid is shown at the integer zoom that makes it at least this big
# plotly's toolbar keeps zoom, pan and reset: fewer buttons, out of the way of the titles
TOOLBAR_REMOVED = ["toImage", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d"]


def visdom_client(server: str, port: int, env: str, timeout: float, **options):
    """A visdom.Visdom client whose every request gives up after `timeout` seconds (the stock
    client has no timeout), raising its errors; ImportError when visdom is not installed."""
    import visdom

    logging.getLogger("visdom").setLevel(logging.CRITICAL)

    class TimeoutVisdom(visdom.Visdom):
        """The stock client with a timeout on every request, through the hook it documents."""

        def _handle_post(self, url: str, data: str | None = None) -> str:
            return self.session.post(url, data=data or {}, timeout=timeout).text

    return TimeoutVisdom(server=server, port=port, env=env, raise_exceptions=True, **options)


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


def image_opts(image: torch.Tensor, title: str) -> dict:
    """A grid's window: the image pixel for pixel, at an integer zoom (MIN_SIDE at least).

    Visdom scales an image to one pixel wider than its pane, so the pane is one pixel narrower
    than the image; and it centres the image in a box one pixel taller than the pane that starts
    under the 14-pixel title bar, so the pane is the fewest 15-pixel rows that show it whole.
    """
    height, width = image.shape[1:]
    zoom = max(1, math.ceil(MIN_SIDE / max(height, width)))
    rows = math.ceil((zoom * height + 39) / 15)
    return dict(title=title, width=zoom * width - 1, height=15 * rows - 24)


def plot_opts(title: str, details: str, size: tuple[int, int], **opts) -> dict:
    """A plot's window: `title` in its title bar and at the plot's top left, `details` (if any)
    on a line above the plot; plotly's toolbar, at the top right, keeps clear of both."""
    left = 55  # the plot's left margin; the title and the details start 10 pixels from the edge
    layout = {
        "title": {
            "text": title,
            "font": {"size": 14},
            "x": 0,
            "xref": "container",
            "xanchor": "left",
            "y": 1,
            "yref": "container",
            "yanchor": "top",
            "pad": {"l": 10, "t": 8},
        },
        "margin": {"l": left, "r": 15, "t": 60, "b": 40},  # the top: a title, a details line
        "modebar": {"remove": TOOLBAR_REMOVED},
    }
    if details:
        layout["annotations"] = [
            {
                "text": details,
                "font": {"size": 11},
                "showarrow": False,
                "xref": "paper",
                "x": 0,
                "xanchor": "left",
                "xshift": 10 - left,
                "yref": "paper",
                "y": 1,
                "yanchor": "bottom",
                "yshift": 4,
            }
        ]
    width, height = size
    return dict(title=title, width=width, height=height, layoutopts={"plotly": layout}, **opts)


def epoch_ticks(rows: list[dict]) -> int | None:
    """A tick per epoch while there are few (plotly would put ticks between them), else its own."""
    return 1 if len(rows) <= 10 else None


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


class Viewer:
    """Sends windows to Visdom (when reachable) and writes the grids to <out>/<name>.png (every
    epoch while no server shows them, else by save() at the end).

    With `log_file`, every message meant for Visdom is also appended to that file (the client's
    log_to_filename), server or not; tools/replay_visdom_log.py sends it to a server later.
    """

    def __init__(
        self,
        out: Path,
        server: str | None,
        port: int,
        env: str,
        timeout: float,
        retry_seconds: float,
        log_file: str | None = None,
    ) -> None:
        self.out = out
        self.server = f"{server}:{port}" if server else None
        self.retry_seconds = retry_seconds
        self.lost_at = 0.0  # when the server was last found unreachable
        self.client = None
        self.unsaved: tuple[dict, LatentMap | None] | None = None  # pictures not in PNG files
        if server is None and log_file is None:
            return
        try:
            # Built offline so that the constructor sends nothing; _probe() goes online.
            self.client = visdom_client(
                server or "localhost",
                port,
                env,
                timeout,
                offline=True,
                log_to_filename=log_file or os.devnull,
                use_incoming_socket=False,
            )
        except ImportError:
            print("visdom is not installed (see README.md, Set up): saving PNGs only")
            return
        self.client.log_to_filename = log_file
        if self.server and not self._probe():
            print(
                f"No Visdom server answers at {self.server}: saving the grids as PNG files in "
                f"{out}; to watch live, start one with `{START_SERVER}` and run again"
            )

    @classmethod
    def for_run(cls, args: Namespace, test: torch.Tensor, labels: torch.Tensor, names: list[str]):
        """The viewer of a training run: its flags' server, the fixed inputs shown every epoch."""
        viewer = cls(
            Path(args.out),
            None if args.no_visdom else args.visdom_server,
            args.visdom_port,
            args.visdom_env,
            args.visdom_timeout,
            args.visdom_retry,
            args.visdom_log,
        )
        viewer.inputs = fixed_inputs(args, test, test.device)
        viewer.labels, viewer.names = labels, names
        return viewer

    def pictures(self, model, epoch: int, means, activity: Activity) -> tuple[dict, LatentMap]:
        """This run's pictures of an epoch (see pictures())."""
        return pictures(model, self.inputs, self.labels, self.names, epoch, means, activity)

    def save(self) -> None:
        """Write the last pictures shown as PNG files, if they are not written yet."""
        if self.unsaved is not None:
            save_pngs(self.out, *self.unsaved)
            self.unsaved = None

    @property
    def online(self) -> bool:
        return self.client is not None and not self.client.offline

    def _probe(self) -> bool:
        """Ask the server for its env list; go online if it answers, else stay offline."""
        self.client.offline = False
        try:
            self.client.get_env_list()
            return True
        except (OSError, ValueError):  # refused, timed out, or not a Visdom answer
            self._go_offline()
            return False

    def _go_offline(self) -> None:
        """Stop sending (the client then only writes its log) until a later probe succeeds."""
        self.client.offline = True
        self.lost_at = time.monotonic()

    def _send(self, method: str, *args, **kwargs) -> None:
        """Call a client method; offline it only logs. A failure takes the viewer offline; one of
        the --visdom-log file (or any, without a server) ends that log instead."""
        try:
            getattr(self.client, method)(*args, **kwargs)
        except (OSError, ValueError) as error:
            log = self.client.log_to_filename
            if log and (self.server is None or getattr(error, "errno", None) is not None):
                self.client.log_to_filename = None  # the log failed, not the server: one line
                reason = getattr(error, "strerror", None) or error
                print(f"writing the Visdom log {log} failed ({reason}): no longer writing it")
                return
            self._go_offline()
            print(
                f"Visdom server at {self.server} stopped answering: saving PNGs, "
                "will try again later"
            )

    def show(
        self,
        grids: dict[str, tuple[torch.Tensor, str]],
        history: list[dict],
        latent: LatentMap | None = None,
    ) -> None:
        """Send the grids (name → (uint8 image, title)), the loss plot, the latent map and the
        active units per epoch. While no server shows them, write them as PNG files too (else
        save() does, at the end)."""
        self.unsaved = (grids, latent)
        if not self.online:
            self.save()
        if self.client is None:
            return
        lost_long_enough = time.monotonic() - self.lost_at >= self.retry_seconds
        if self.server and self.client.offline and lost_long_enough and self._probe():
            print(f"Visdom server at {self.server} answers again: sending the windows there")
        outputs = {name: grids[name] for name in OUTPUTS if name in grids}
        self._send_images(outputs)
        self._send_losses(history)
        counted = [row for row in history if "active_units" in row]  # older runs lack it
        if counted:
            self._send_active_units(counted)
        if latent is not None:
            self._send_map(latent)
        self._send_images({name: shown for name, shown in grids.items() if name not in outputs})

    def _send_images(self, grids: dict[str, tuple[torch.Tensor, str]]) -> None:
        """An image window for each grid (name → (uint8 image, title))."""
        for name, (image, title) in grids.items():
            self._send("image", image.numpy(), win=name, opts=image_opts(image, title))

    def _send_active_units(self, counted: list[dict]) -> None:
        """The active units per epoch."""
        self._send(
            "line",
            np.array([row["active_units"] for row in counted]),
            np.array([row["epoch"] for row in counted]),
            win="active_units",
            opts=plot_opts(
                "active latent dimensions",
                f"dimension u counts when Cov_x E[z_u] > {ACTIVE_THRESHOLD}",
                ACTIVE_SIZE,
                xlabel="epoch",
                xtickstep=epoch_ticks(counted),
                ylabel="dimensions",
                ytickstep=1,
            ),
        )

    def _send_losses(self, history: list[dict]) -> None:
        """The loss pane: train and test loss per epoch, and the watched −log p(x) if any."""
        opts = plot_opts(
            "loss per image",
            "",
            LOSS_SIZE,
            legend=["train", "test"],
            xlabel="epoch",
            xtickstep=epoch_ticks(history),
        )
        # the legend in one line above the plot, at its right, where the details line would be
        legend = {"orientation": "h", "x": 1, "xanchor": "right", "y": 1, "yanchor": "bottom"}
        opts["layoutopts"]["plotly"]["legend"] = legend
        self._send(
            "line",
            np.array([[row["train_loss"], row["test_loss"]] for row in history]),
            np.array([[row["epoch"]] * 2 for row in history]),
            win="loss",
            opts=opts,
        )
        watched = [row for row in history if "watch_nll" in row]
        if watched:  # a trace of its own: it has points only on the epochs it was estimated
            self._send(
                "line",
                np.array([row["watch_nll"] for row in watched]),
                np.array([row["epoch"] for row in watched]),
                win="loss",
                update="append",
                name=watch_name(watched[-1]),
            )

    def _send_map(self, latent: LatentMap) -> None:
        """The latent map as a Visdom scatter: one trace per class, named in the legend."""
        self._send(
            "scatter",
            latent.points.numpy(),
            (latent.labels + 1).numpy(),  # Visdom's classes are 1..K, one trace for each present
            win="latent_map",
            opts=plot_opts(
                latent.title,
                latent.details,
                MAP_SIZE,
                legend=latent.names,
                markersize=4,
                xlabel=latent.axis_labels[0],
                ylabel=latent.axis_labels[1],
            ),
        )


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


def watch_name(row: dict) -> str:
    """The loss pane's name for the watched −log p(x) line."""
    return f"test −log p(x), k={row['watch_k']}, {row['watch_images']} images"


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
