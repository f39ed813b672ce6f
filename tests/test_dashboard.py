"""The Dask dashboard of a real local cluster draws the task stream of a running stage,
seen in headless Chromium (selenium + chromedriver)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import affinity_dist as ad
from affinity_dist.viewers.neuroglancer import CHROMIUM_FLAGS

pytestmark = pytest.mark.slow

#: The task stream figure (``name="task_stream"`` in distributed's dashboard) and the
#: number of rectangles its data source holds in the browser's Bokeh document.
TASK_STREAM_JS = """
const doc = (window.Bokeh && Bokeh.documents.length) ? Bokeh.documents[0] : null;
const fig = doc ? doc.get_model_by_name("task_stream") : null;
if (!fig) { return null; }
const source = fig.renderers[0].data_source;
return [fig.title.text, source.data.key.length];
"""


def coloured_pixels(path: Path) -> int:
    """Pixels of clearly saturated colour (task rectangles; the empty plot is white and
    grey)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(np.sum(rgb.max(axis=-1) - rgb.min(axis=-1) > 60))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed (/usr/bin/chromium, "
                    "/usr/bin/chromedriver): run .ci/install_browser.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,800"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_script_timeout(120)  # a busy renderer on a loaded machine is slow, not wrong
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_for(predicate: Any, what: str, limit: float = 300.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (a hang guard, not a timing
    assertion: the limit is far beyond what the work needs on a loaded machine)."""
    from selenium.common.exceptions import TimeoutException

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except TimeoutException:  # the page's script did not answer in time: ask again
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def test_task_stream_is_drawn(browser: Any, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address="127.0.0.1:0") as cluster,
          Client(cluster) as client):
        status = client.dashboard_link
        assert status.startswith("http://127.0.0.1:") and status.endswith("/status")
        stream = status.removesuffix("/status") + "/individual-task-stream"

        browser.get(stream)
        before = wait_for(lambda: browser.execute_script(TASK_STREAM_JS), "the empty stream")
        assert before[0] == "Task Stream" and before[1] <= 1  # the invisible start marker
        time.sleep(2)  # Bokeh draws after its document loads
        browser.save_screenshot(str(tmp_path / "before.png"))

        # The real thing: sample stages (one task per block) on the cluster, one after
        # the other, until the browser has seen their tasks.
        stop, runs, errors = threading.Event(), [0], []

        def work() -> None:
            try:
                while not stop.is_set():
                    ad.sample(tmp_path / f"s{runs[0]}.zarr", shape=(64, 64, 64),
                              chunks=(16, 32, 32), client=client, progress=False)
                    runs[0] += 1
            except Exception as err:  # reported by the test below
                errors.append(err)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            wait_for(lambda: runs[0] >= 2 or errors, "two sample runs")
            drawn = wait_for(lambda: (r := browser.execute_script(TASK_STREAM_JS)) and
                             r[1] > 32 and r, "task rectangles in the browser")
            time.sleep(2)  # the next Bokeh redraw
            browser.save_screenshot(str(tmp_path / "after.png"))

            browser.get(status)  # the main status page holds the same figure
            on_status = wait_for(lambda: (r := browser.execute_script(TASK_STREAM_JS)) and
                                 r[1] > 1 and r, "the task stream on /status")
        finally:
            stop.set()
            worker.join(timeout=300)
        assert not errors, errors
        assert drawn[0] == "Task Stream" and on_status[0] == "Task Stream"

    empty, busy = coloured_pixels(tmp_path / "before.png"), coloured_pixels(tmp_path /
                                                                           "after.png")
    size = Image.open(tmp_path / "after.png").size
    assert busy > 0.05 * size[0] * size[1], (empty, busy)  # rectangles fill the plot
    assert busy > 10 * max(empty, 100), (empty, busy)
