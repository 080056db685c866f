"""The Visdom page of a run: the client (with a timeout on every request), the page's layout,
and the Viewer that sends an epoch's pictures (pictures.py) and curves there.

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
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from helpers.commands import python_command
from helpers.latent import ACTIVE_COLOUR, ACTIVE_THRESHOLD, INACTIVE_COLOUR, DimensionKL, LatentMap
from helpers.pictures import TestPass, fixed_inputs, pictures, save_pngs
from helpers.runfiles import Writer, disk_write

START_SERVER = f"{python_command()} -m visdom.server -bind_local"


def visdom_version() -> tuple[int, ...]:
    """The installed visdom's (major, minor), (0, 0) where it is not installed."""
    try:
        return tuple(int(part) for part in metadata.version("visdom").split(".")[:2])
    except metadata.PackageNotFoundError:
        return (0, 0)


# The page: three rows, the same at every width from 1280 to 1920 pixels, that fit the viewport
# of a 1920x1080 screen's browser (950 pixels tall) and keep the test images, their
# reconstructions and the loss above the fold of a 1280x720 one. Visdom packs windows in rows,
# in the order of their first messages, and again whenever one changes size, so every window
# keeps the size of its first message; show() sends the pictures of the model's outputs first
# (test images, reconstructions, prior samples, interpolations, the least likely test images),
# then the curves (loss, active units), then the latent space (map, traversal or manifold, KL
# per dimension). The windows start at y=68, each row 10 pixels below the tallest window of the
# row above: 68 + 275 + 10 + 230 + 10 + 350 = 943. Each row fits in 1255 pixels (1280 less a
# scrollbar) on both Visdom versions, and the first window of the next row is too wide to join
# it even at 1920: a reloaded page places its windows in a 1280-pixel grid until it has
# measured its width, and one past that grid's edge stays where the grid moved it.
OUTPUTS = ("originals", "reconstructions", "samples", "interpolation", "least_likely")
CAPTIONED = ("least_likely",)  # pictures with text: shown pixel for pixel, as a zoom blurs text
# Plot panes (width, height) in pixels; a plot's height is 15·n - 24: Visdom's grid rows are 15
# pixels (with their margin) and its title bar 14, so that the plot fills whole rows.
LOSS_SIZE, ACTIVE_SIZE = (900, 216), (320, 216)  # 16 rows
MAP_SIZE, KL_SIZE = (670, 336), (250, 336)  # 24 rows, the traversal's 23 beside them
# Visdom 0.2 scales an image to one pixel wider than its pane; 0.3 measures the pane less its
# 2-pixel border, so one pixel narrower. The pane's width is the image's plus this.
IMAGE_MARGIN = 1 if visdom_version() >= (0, 3) else -1
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


def image_opts(image: torch.Tensor, title: str, min_side: int = MIN_SIDE) -> dict:
    """A grid's window: the image pixel for pixel, at an integer zoom (`min_side` at least).

    Visdom scales an image to the width of its pane plus IMAGE_MARGIN; and it centres the
    image in a box one pixel taller than the pane that starts under the 14-pixel title bar, so
    the pane is the fewest 15-pixel rows that show it whole.
    """
    height, width = image.shape[1:]
    zoom = max(1, math.ceil(min_side / max(height, width)))
    rows = math.ceil((zoom * height + 39) / 15)
    return dict(title=title, width=zoom * width + IMAGE_MARGIN, height=15 * rows - 24)


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


def axis_range(xy: str, values, pad: float = 0.04) -> dict:
    """The opts that fix axis `xy` ("x" or "y") to the range of `values`, `pad` of it wider on
    each side: visdom 0.3's page keeps a replaced plot's first axes unless a message names them."""
    low, high = float(np.min(values)), float(np.max(values))
    margin = (high - low) * pad or max(abs(high) * pad, 0.5)
    return {f"{xy}tickmin": low - margin, f"{xy}tickmax": high + margin}


def epoch_ticks(rows: list[dict]) -> int | None:
    """A tick per epoch while there are few (plotly would put ticks between them), else its own."""
    return 1 if len(rows) <= 10 else None


def watch_name(row: dict) -> str:
    """The loss pane's name for the watched −log p(x) line."""
    return f"test −log p(x), k={row['watch_k']}, {row['watch_images']} images"


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
        # the pictures not yet in PNG files: the grids, the latent map, the KL bars
        self.unsaved: tuple[dict, LatentMap | None, DimensionKL | None] | None = None
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
    def for_run(
        cls,
        args: Namespace,
        test: torch.Tensor,
        labels: torch.Tensor,
        names: list[str],
        writer: Writer,
    ) -> "Viewer":
        """The viewer of a training run: its flags' server, the fixed inputs shown every epoch,
        the test images and their labels (for the least likely and the map), and the run's writer
        thread, which sends the pictures."""
        viewer = cls(
            Path(args.out),
            None if args.no_visdom else args.visdom_server,
            args.visdom_port,
            args.visdom_env,
            args.visdom_timeout,
            args.visdom_retry,
            args.visdom_log,
        )
        viewer.inputs, viewer.test = fixed_inputs(args, test, test.device), test
        viewer.labels, viewer.names, viewer.writer = labels, names, writer
        return viewer

    def push_pictures(self, model, epoch: int, history: list[dict], tested: TestPass) -> None:
        """Draw the epoch's pictures now, from the model as it is and its test pass; send them
        with the curves of `history` to Visdom (or write them as PNG files) on the writer's
        thread, after the checkpoint, while the next epoch trains."""
        inputs, test, labels, names = self.inputs, self.test, self.labels, self.names
        grids, latent, kl = pictures(model, inputs, test, labels, names, epoch, tested)
        history = list(history)
        self.writer.submit(lambda: disk_write(self.show, grids, history, latent, kl))

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
        kl: DimensionKL | None = None,
    ) -> None:
        """Send the grids (name → (uint8 image, title)), the loss plot, the latent map, the
        active units per epoch and the KL per dimension. While no server shows them, write them
        as PNG files too (else save() does, at the end)."""
        self.unsaved = (grids, latent, kl)
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
        if kl is not None:
            self._send_kl(kl)

    def _send_images(self, grids: dict[str, tuple[torch.Tensor, str]]) -> None:
        """An image window for each grid (name → (uint8 image, title))."""
        for name, (image, title) in grids.items():
            opts = image_opts(image, title, 0 if name in CAPTIONED else MIN_SIDE)
            self._send("image", image.numpy(), win=name, opts=opts)

    def _send_active_units(self, counted: list[dict]) -> None:
        """The active units per epoch."""
        units = np.array([row["active_units"] for row in counted])
        epochs = np.array([row["epoch"] for row in counted])
        self._send(
            "line",
            units,
            epochs,
            win="active_units",
            opts=plot_opts(
                "active latent dimensions",
                f"dimension u counts when Cov_x E[z_u] > {ACTIVE_THRESHOLD}",
                ACTIVE_SIZE,
                xlabel="epoch",
                xtickstep=epoch_ticks(counted),
                ylabel="dimensions",
                ytickstep=1,
                **axis_range("x", epochs),
                **axis_range("y", units),
            ),
        )

    def _send_losses(self, history: list[dict]) -> None:
        """The loss pane: train and test loss per epoch, and the watched −log p(x) if any."""
        watched = [row for row in history if "watch_nll" in row]
        losses = [row[key] for row in history for key in ("train_loss", "test_loss")]
        opts = plot_opts(
            "loss per image",
            "",
            LOSS_SIZE,
            legend=["train", "test"],
            xlabel="epoch",
            xtickstep=epoch_ticks(history),
            **axis_range("x", [row["epoch"] for row in history]),
            **axis_range("y", losses + [row["watch_nll"] for row in watched]),
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
                **axis_range("x", latent.points[:, 0].numpy()),
                **axis_range("y", latent.points[:, 1].numpy()),
            ),
        )

    def _send_kl(self, kl: DimensionKL) -> None:
        """The KL per dimension as bars: one trace of the active dimensions, one of the others
        (grey), stacked so that each dimension has one bar."""
        active = kl.active.numpy()
        nats = kl.nats.numpy()
        opts = plot_opts(
            kl.title,
            kl.details,
            KL_SIZE,
            legend=["active", "inactive"],
            stacked=True,
            xlabel="latent dimension",
            xtickstep=1 if len(nats) <= 10 else None,
            ylabel="nats",
            xtickmin=0.5,
            xtickmax=len(nats) + 0.5,
            ytickmin=0.0,
            ytickmax=max(float(nats.max()), 0.0) * 1.05 or 1.0,
        )
        layout = opts["layoutopts"]["plotly"]
        layout.update(showlegend=False, colorway=[ACTIVE_COLOUR, INACTIVE_COLOUR], bargap=0.2)
        # no zoom in so few bars: the toolbar keeps out of the title in this narrow window
        layout["modebar"]["remove"] = [*TOOLBAR_REMOVED, "zoom2d", "pan2d", "resetScale2d"]
        self._send(
            "bar",
            np.stack([np.where(active, nats, 0.0), np.where(active, 0.0, nats)], axis=1),
            np.arange(1, len(nats) + 1),
            win="kl_per_dim",
            opts=opts,
        )
