"""What a person sees: headless Chromium opens the Visdom page that a two-epoch run pushed to."""

import json
import os
import signal

import pytest

import main
from conftest import SHORT, metrics, start_explorer, visdom_flags, wait_for
from explore import IMAGE_WINDOW
from screenshot_visdom import chromium, wait_for_panes

# The src of the explorer's image (a data: URL), and its first value's input field.
EXPLORER_IMAGE = """return Array.from(document.querySelectorAll('.react-grid-item'))
    .find(pane => pane.innerText.includes('decoded image')).querySelector('img').src"""
FIRST_VALUE = ".content-properties input"


def expected_images(active: int) -> dict[str, tuple[int, int]]:
    """Title → pixel size of its image: 16 images in a 4x4 grid, the views 10 wide, the
    traversal a row for each of the 10 dimensions (those not active left white)."""
    return {
        "test images (fixed)": (122, 122),
        "reconstructions, epoch 2": (122, 122),
        "samples from the prior, epoch 2": (122, 122),
        f"traversal: {active} of 10 dims active, -3..3, epoch 2": (302, 302),
        "interpolations, epoch 2": (302, 122),  # 4 pairs of test images
    }


@pytest.fixture
def browser(tmp_path):
    try:
        driver = chromium(str(tmp_path / "chromium-profile"))
    except (
        RuntimeError
    ) as error:  # skip where Chromium cannot run; in CI (.ci/run installs it) fail
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    yield driver
    driver.quit()


def shown(panes: list[dict], expected: dict) -> tuple[dict, list]:
    images = {
        title: [tuple(size) for size in pane["images"]]
        for pane in panes
        for title in expected
        if title in pane["text"]
    }
    return images, [pane["traces"] for pane in panes if pane["traces"]]


def test_the_page_shows_the_grids_and_the_loss_plot(visdom_server, browser, data_dir, tmp_path):
    assert (
        main.main(
            [
                *SHORT,
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / "run"),
                *visdom_flags(visdom_server, "browser"),
            ]
        )
        == 0
    )
    expected = expected_images(metrics(tmp_path / "run")[-1]["active_units"])

    def ready(panes: list[dict]) -> bool:
        images, plots = shown(panes, expected)
        return len(images) == len(expected) and all(images.values()) and len(plots) == 3

    browser.get(f"{visdom_server.url}/env/browser")
    panes = wait_for_panes(browser, ready)
    browser.save_screenshot(str(tmp_path / "visdom.png"))
    images, _ = shown(panes, expected)
    assert images == {title: [size] for title, size in expected.items()}
    plot = {
        title: next(pane["traces"] for pane in panes if title in pane["text"])
        for title in ("loss per image", "active latent dimensions", "latent map")
    }
    assert sorted(plot["loss per image"]) == [["test", [1, 2]], ["train", [1, 2]]]
    assert [x for _, x in plot["active latent dimensions"]] == [[1, 2]]
    assert sorted(name for name, _ in plot["latent map"]) == list("0123456789")  # one per class
    assert (tmp_path / "visdom.png").stat().st_size > 10_000


def test_the_explorer_redraws_when_a_value_is_typed_into_the_page(
    trained_run, visdom_server, browser, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    explorer = start_explorer(trained_run / "checkpoint.pt", visdom_server, "explore")
    client = visdom_server.client("explore")
    try:
        wait_for(
            lambda: IMAGE_WINDOW in json.loads(client.get_window_data(env="explore")),
            "the explorer's panes",
            explorer,
        )
        browser.get(f"{visdom_server.url}/env/explore")
        wait_for_panes(
            browser,
            lambda panes: (
                sum(bool(p["images"]) for p in panes) == 1 and any(p["inputs"] for p in panes)
            ),
        )
        before = browser.execute_script(EXPLORER_IMAGE)
        field = browser.find_element(By.CSS_SELECTOR, FIRST_VALUE)
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("2.5", Keys.ENTER)  # Enter submits the value, as a person would
        wait_for(
            lambda: browser.execute_script(EXPLORER_IMAGE) != before,
            "the image to change",
            explorer,
        )
        browser.save_screenshot(str(tmp_path / "explorer.png"))
        values = json.loads(client.get_window_data(env="explore"))["explorer_values"]["content"]
        assert (
            values[0]["value"] == "2.50"
            and browser.find_element(By.CSS_SELECTOR, FIRST_VALUE).get_attribute("value") == "2.50"
        )
        explorer.send_signal(signal.SIGINT)
        stdout, stderr = explorer.communicate(timeout=60)  # a safety limit, not a measurement
    finally:
        if explorer.poll() is None:
            explorer.kill()
            explorer.communicate()
    assert explorer.returncode == 0 and "explorer stopped (Ctrl-C)" in stdout
    assert "Traceback" not in stderr, stderr
