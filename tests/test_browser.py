"""What a person sees: headless Chromium opens the Visdom page that a two-epoch run pushed to."""

import os
import sys

import pytest

import main
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from screenshot_visdom import chromium, wait_for_panes  # noqa: E402

EXPECTED = {  # title → pixel size of its image: 16 images in a 4x4 grid, the views 10 wide
    "test images (fixed)": (122, 122),
    "reconstructions, epoch 2": (122, 122),
    "samples from fixed z ~ N(0, I), epoch 2": (122, 122),
    "traversal: 10 most used dims, -3..3, epoch 2": (302, 302),
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


def shown(panes: list[dict]) -> tuple[dict, list]:
    images = {title: [tuple(size) for size in pane["images"]] for pane in panes for title in EXPECTED if title in pane["text"]}
    return images, [pane["traces"] for pane in panes if pane["traces"]]


def test_the_page_shows_the_grids_and_the_loss_plot(visdom_server, browser, data_dir, tmp_path):
    assert main.main(["--epochs", "2", "--batch-size", "64", "--num-images", "16", "--data-dir", str(data_dir),
                      "--out", str(tmp_path / "run"), "--visdom-server", "http://127.0.0.1",
                      "--visdom-port", str(visdom_server.port), "--visdom-env", "browser"]) == 0
    browser.get(f"{visdom_server.url}/env/browser")
    panes = wait_for_panes(browser, lambda panes: len(shown(panes)[0]) == len(EXPECTED) and all(shown(panes)[0].values()) and shown(panes)[1])
    browser.save_screenshot(str(tmp_path / "visdom.png"))
    images, plots = shown(panes)
    assert images == {title: [size] for title, size in EXPECTED.items()}
    assert len(plots) == 1 and sorted(plots[0]) == [["test", [1, 2]], ["train", [1, 2]]]
    assert (tmp_path / "visdom.png").stat().st_size > 10_000
