"""Explore a trained VAE's latent space live in Visdom: set the active dimensions, see the image.

    make server                                          # one terminal
    .venv/bin/python tools/explore.py runs/X/checkpoint.pt   # another; open the page it prints

A properties pane lists the active latent dimensions (Burda et al.'s criterion, on the first
test images) with their values; type a value, press Enter, and the decoded image beside it
changes. Ctrl-C stops the explorer (exit 0); if the server goes away it says so and exits (1).
"""

import argparse
import base64
import queue
import sys
from pathlib import Path

import torch
from torchvision.io import encode_png

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for helpers/ and vae.py
from helpers.checkpoint import CheckpointError, load_checkpoint
from helpers.ctrl_c import ctrl_c_remembered, raise_if_ctrl_c
from helpers.data import DataError, load_images, to_test_pixels
from helpers.flags import port
from helpers.latent import MAP_IMAGES, active_units, latent_means
from helpers.models import trained_model
from helpers.settings import data_folder_here
from helpers.visdom_page import START_SERVER, visdom_client
from vae import VAE

VALUES_WINDOW, IMAGE_WINDOW = "explorer_values", "explorer_image"
MAX_DIMS = 32  # at most this many active dimensions get a value to set, the most active first
# The values table's rows (Bootstrap's 20-pixel line and a border) and the reset button's row,
# and the decoded image's side: the windows are sized to them.
ROW_PIXELS, BUTTON_ROW_PIXELS, IMAGE_PIXELS = 21, 32, 224
CHECK_SECONDS = 1.0  # how often, while no value changes, the server is asked if it is there


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/explore.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a run's checkpoint.pt, written by main.py")
    p.add_argument(
        "--data-dir",
        help="folder holding <Dataset>/raw/ (default: the run's, if it holds the dataset here, "
        "else ./data)",
    )
    p.add_argument("--visdom-server", default="http://localhost", help="(default: %(default)s)")
    p.add_argument("--visdom-port", type=port, default=8097, help="(default: %(default)s)")
    p.add_argument("--visdom-env", default="explore", help="(default: %(default)s)")
    p.add_argument(
        "--visdom-timeout",
        type=float,
        default=5.0,
        help="seconds before a Visdom request gives up (default: %(default)s)",
    )
    return p


class Explorer:
    """The model, the active dimensions and the code being shown; draws both panes."""

    def __init__(self, model: VAE, means: torch.Tensor, client) -> None:
        self.model, self.client = model, client
        activity = active_units(means)
        self.dims = activity.ranked(MAX_DIMS)
        self.count, self.latent_dim = activity.count, activity.dims
        self.start = means.mean(dim=0)  # the centre of the test images' codes
        self.low, self.high = means.min(dim=0).values, means.max(dim=0).values
        self.code = self.start.clone()

    def set_value(self, property_id: int, text: str) -> None:
        """Apply one PropertyUpdate: a new value for a dimension, or the reset button."""
        if property_id == len(self.dims):
            self.code = self.start.clone()
            return
        try:
            value = float(text)
        except ValueError:
            return  # not a number: the redrawn pane shows the value in force
        if property_id < len(self.dims) and abs(value) < 1e6:
            self.code[self.dims[property_id]] = value

    def draw(self) -> None:
        """Send the values pane and the decoded image of the current code."""
        rows = [
            {
                "type": "text",
                "value": f"{float(self.code[u]):.2f}",
                "name": f"z{u + 1} ({self.low[u]:.1f}..{self.high[u]:.1f})",
            }
            for u in self.dims
        ]
        rows.append(
            {"type": "button", "name": "back to the centre of the test images", "value": "reset"}
        )
        active = f"{self.count} of {self.latent_dim} dims active"
        if len(self.dims) < self.count:
            active = f"{self.count} of {self.latent_dim} active, top {len(self.dims)}"
        self.client.properties(
            rows,
            win=VALUES_WINDOW,
            opts={
                "title": f"{active} (ranges: test images): type a value, Enter",
                "width": 420,
                "height": ROW_PIXELS * len(self.dims) + BUTTON_ROW_PIXELS,
            },
        )
        with torch.inference_mode():
            image = torch.sigmoid(self.model.decode(self.code[None])).reshape(1, 28, 28)
        png = base64.b64encode(encode_png(image.mul(255).round().to(torch.uint8)).numpy().tobytes())
        # A text pane holding the PNG: Visdom's image panes swallow every key typed on the page.
        self.client.text(
            f'<img src="data:image/png;base64,{png.decode()}" width="{IMAGE_PIXELS}" '
            f'height="{IMAGE_PIXELS}" style="image-rendering: pixelated; display: block">',
            win=IMAGE_WINDOW,
            opts={"title": "decoded image", "width": IMAGE_PIXELS + 2, "height": IMAGE_PIXELS},
        )


def load_model(checkpoint: dict) -> VAE:
    """The checkpoint's model in eval mode on the CPU, built and loaded as main.py does."""
    return trained_model(argparse.Namespace(**checkpoint["args"]), checkpoint, torch.device("cpu"))


def serve(explorer: Explorer, client, events: "queue.Queue[dict]", server: str) -> int:
    """Redraw on every value change until the server goes away (1); Ctrl-C ends it in main."""
    try:
        explorer.draw()
        while True:
            raise_if_ctrl_c()  # one that Python dropped (in a finalizer) still stops the explorer
            try:
                event = events.get(timeout=CHECK_SECONDS)
            except queue.Empty:
                # No change: is the server still there? The client's socket never says (its
                # on_close has the signature of an old websocket-client, so it is never called).
                client.get_env_list()
                continue
            explorer.set_value(int(event["propertyId"]), str(event["value"]))
            explorer.draw()
    except (OSError, ValueError):  # refused, timed out, or not a Visdom answer
        print(
            f"the Visdom server at {server} went away: explorer stopped; "
            f"start it again with `{START_SERVER}` and rerun tools/explore.py",
            file=sys.stderr,
        )
        return 1


class ExploreError(Exception):
    """A problem the user can fix; the message says how, `code` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str]) -> int:
    """Run the explorer until Ctrl-C (exit 0) or an error (its one line, exit 1 or 2)."""
    try:
        return explore(build_parser().parse_args(argv))
    except ExploreError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("\nexplorer stopped (Ctrl-C)")
        return 0


def load(args: argparse.Namespace) -> tuple[VAE, torch.Tensor]:
    """The checkpoint's model and the latent means of the first test images."""
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        model = load_model(checkpoint)
    except CheckpointError as error:
        raise ExploreError(str(error), 2) from None
    saved = checkpoint["args"]
    try:
        folder = args.data_dir or data_folder_here(saved["data_dir"], saved["dataset"])
        images = load_images(saved["dataset"], folder, train=False)
    except DataError as error:
        raise ExploreError(str(error), 1) from None
    pixels = to_test_pixels(images[:MAP_IMAGES], torch.device("cpu"), saved["binarize"])
    return model, latent_means(model, pixels)


def connect(args: argparse.Namespace, server: str):
    """A client of the server at `server` with its event socket open."""

    def client(events: bool):
        return visdom_client(
            args.visdom_server,
            args.visdom_port,
            args.visdom_env,
            args.visdom_timeout,
            use_incoming_socket=events,
        )

    try:
        client(events=False).get_env_list()  # answers at once, or not at all
        events_client = client(events=True)
    except (OSError, ValueError):
        raise ExploreError(
            f"no Visdom server answers at {server}: start one with "
            f"`{START_SERVER}` and run tools/explore.py again",
            1,
        ) from None
    if not events_client.socket_alive:
        raise ExploreError(
            f"the Visdom server at {server} answers but its event socket does "
            "not: restart it and run tools/explore.py again",
            1,
        )
    return events_client


def explore(args: argparse.Namespace) -> int:
    """Show the panes and redraw on every value set, until the server goes away."""
    model, means = load(args)
    server = f"{args.visdom_server}:{args.visdom_port}"
    client = connect(args, server)
    explorer = Explorer(model, means, client)
    if not explorer.dims:
        raise ExploreError(
            f"no latent dimension of this model is active (0 of "
            f"{explorer.latent_dim}): every code decodes to about the same "
            "image, there is nothing to explore",
            1,
        )
    events: queue.Queue[dict] = queue.Queue()
    client.register_event_handler(
        lambda event: events.put(event) if event.get("event_type") == "PropertyUpdate" else None,
        VALUES_WINDOW,
    )
    print(
        f"explorer: {server}/env/{args.visdom_env} shows {explorer.count} of "
        f"{explorer.latent_dim} active latent dimensions; set a value and press Enter. "
        "Ctrl-C stops it.",
        flush=True,
    )
    with ctrl_c_remembered():
        return serve(explorer, client, events, server)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
