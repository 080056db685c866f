"""What a person sees: headless Chromium opens the Visdom page that a two-epoch run pushed to."""

import json
import os
import sys

import pytest

import main
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from screenshot_visdom import chromium, wait_for_panes  # noqa: E402



def expected_images(active: int) -> dict[str, tuple[int, int]]:
    """Title → pixel size of its image: 16 images in a 4x4 grid, the views 10 wide, the
    traversal one row per active dimension."""
    return {
        "test images (fixed)": (122, 122),
        "reconstructions, epoch 2": (122, 122),
        "samples from fixed z ~ N(0, I), epoch 2": (122, 122),
        f"traversal: {active} of 10 dims active, -3..3, epoch 2": (302, 2 + 30 * active),
        "interpolations, epoch 2": (302, 122),  # 4 pairs of test images
    }


@pytest.fixture
def browser(tmp_path):
    try:
        driver = chromium(str(tmp_path / "chromium-profile"))
    except RuntimeError as error:  # skip where Chromium cannot run; in CI (.ci/run installs it) fail
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    yield driver
    driver.quit()


def shown(panes: list[dict], expected: dict) -> tuple[dict, list]:
    images = {title: [tuple(size) for size in pane["images"]] for pane in panes for title in expected if title in pane["text"]}
    return images, [pane["traces"] for pane in panes if pane["traces"]]


def test_the_page_shows_the_grids_and_the_loss_plot(visdom_server, browser, data_dir, tmp_path):
    assert main.main(["--epochs", "2", "--batch-size", "64", "--num-images", "16", "--data-dir", str(data_dir),
                      "--out", str(tmp_path / "run"), "--visdom-server", "http://127.0.0.1",
                      "--visdom-port", str(visdom_server.port), "--visdom-env", "browser"]) == 0
    active = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["active_units"]
    expected = expected_images(active)
    browser.get(f"{visdom_server.url}/env/browser")
    panes = wait_for_panes(browser, lambda panes: len(shown(panes, expected)[0]) == len(expected)
                           and all(shown(panes, expected)[0].values()) and len(shown(panes, expected)[1]) == 3)
    browser.save_screenshot(str(tmp_path / "visdom.png"))
    images, plots = shown(panes, expected)
    assert images == {title: [size] for title, size in expected.items()}
    plot = {title: next(pane["traces"] for pane in panes if title in pane["text"])
            for title in ("loss per image", "active latent dimensions", "latent map")}
    assert sorted(plot["loss per image"]) == [["test", [1, 2]], ["train", [1, 2]]]
    assert [x for _, x in plot["active latent dimensions"]] == [[1, 2]]
    assert sorted(name for name, _ in plot["latent map"]) == list("0123456789")  # one per class
    assert (tmp_path / "visdom.png").stat().st_size > 10_000
