"""View a dataset in neuroglancer, served from this machine, or screenshot it headless.

:func:`view` opens the arrays of a dataset (DESIGN.md layout) as neuroglancer layers:
``raw`` as an image, ``affinities`` (c, z, y, x) as an RGB image (channels -z, -y, -x
mapped to red, green, blue), ``labels``, ``fragments`` and ``segmentation`` as
segmentation layers, each at its voxel size and offset in nm. The data is served by
neuroglancer's Python server through :class:`neuroglancer.LocalVolume` straight from the
Zarr arrays: every request reads only the chunks it covers (coarser zooms are downsampled
on the fly from those reads), nothing is loaded whole. Meshes are refused, since
neuroglancer's mesher needs the whole volume in memory.

With ``screenshot``, headless Chromium (driven by selenium and chromedriver) renders the
viewer with software WebGL (SwiftShader) and neuroglancer's screenshot action, which
waits until every visible chunk is drawn, writes the PNG.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import AffinityDistError, ConfigError, DataError, bad_value
from ..storage import Volume, list_arrays, open_dataset, open_volume, write_atomic, zarr_listing

__all__ = ["AFFINITY_SHADER", "CHROMIUM_FLAGS", "Layer", "add_layers", "find_browser",
           "open_viewer", "take_screenshot", "view", "viewable_layers"]

log = logging.getLogger(__name__)

#: Arrays shown, bottom layer first.
LAYER_ORDER = ("raw", "affinities", "labels", "fragments", "segmentation")
LABEL_ARRAYS = ("labels", "fragments", "segmentation")

#: Affinity channels 0, 1, 2 (-z, -y, -x) as red, green, blue; uint8 0-255 and float
#: 0-1 both normalise to [0, 1].
AFFINITY_SHADER = """\
void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)),
               toNormalized(getDataValue(1)),
               toNormalized(getDataValue(2))));
}
"""

#: Headless Chromium on a machine without GPU or network: WebGL in software (ANGLE on
#: SwiftShader, which Chromium now wants opted into), no background traffic.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


@dataclass(frozen=True)
class Layer:
    """One neuroglancer layer: an array of the dataset and how to show it."""

    name: str
    kind: Literal["image", "rgb", "segmentation"]
    volume: Volume
    visible: bool


def viewable_layers(dataset: str | os.PathLike[str]) -> list[Layer]:
    """The layers of ``dataset``, bottom first; raw and the topmost label array visible.

    Raises InputNotFoundError for a missing dataset, DataError when it holds none of the
    arrays of DESIGN.md or one of them has the wrong rank or dtype.
    """
    group = open_dataset(dataset)
    with zarr_listing(dataset):
        present = [n for n in LAYER_ORDER if n in group]
    if not present:
        arrays = list_arrays(dataset, top_level=True)
        raise DataError(f"dataset: got {str(dataset)!r} with arrays {arrays}, "
                        f"expected at least one of {', '.join(LAYER_ORDER)}")
    shown_labels = next((n for n in reversed(LABEL_ARRAYS) if n in present), None)
    layers = []
    for name in present:
        volume = open_volume(dataset, name)
        if name == "affinities":
            if len(volume.shape) != 4 or volume.shape[0] < 3:
                raise DataError(f"affinities: got shape {volume.shape}, expected "
                                "(c >= 3, z, y, x)")
            layers.append(Layer(name, "rgb", volume, visible="raw" not in present))
        elif len(volume.shape) != 3:
            raise DataError(f"{name}: got shape {volume.shape}, expected (z, y, x)")
        elif name in LABEL_ARRAYS:
            if volume.dtype.kind not in "iu":
                raise DataError(f"{name}: got dtype {volume.dtype}, expected integer ids")
            layers.append(Layer(name, "segmentation", volume, visible=name == shown_labels))
        else:
            layers.append(Layer(name, "image", volume, visible=True))
    return layers


@functools.cache
def _lazy_volume_class() -> Any:
    """LocalVolume that refuses meshes (neuroglancer's mesher reads the whole array);
    made on first use, so that importing this module does not import neuroglancer."""
    import neuroglancer
    from neuroglancer.local_volume import MeshesNotSupportedForVolume

    class LazyVolume(neuroglancer.LocalVolume):  # type: ignore[misc]
        def get_object_mesh(self, object_id: int) -> bytes:
            raise MeshesNotSupportedForVolume()

    return LazyVolume


def _space(names: Sequence[str], scales: Sequence[float]) -> Any:
    import neuroglancer

    return neuroglancer.CoordinateSpace(
        names=list(names), scales=[float(s) for s in scales],
        units=["" if n.endswith("^") else "nm" for n in names])


def add_layers(state: Any, layers: Sequence[Layer], *, fit_pixels: int = 800) -> None:
    """Fill a ``neuroglancer.ViewerState`` with ``layers``: global x, y, z axes at the
    finest voxel size present, the view centred on the data and zoomed to show about
    ``fit_pixels`` screen pixels across its larger x/y extent."""
    import neuroglancer

    scale = np.min([lay.volume.voxel_size for lay in layers], axis=0)  # z, y, x nm
    state.dimensions = _space(("x", "y", "z"), scale[::-1])
    for lay in layers:
        vol = lay.volume
        voxel, offset = np.array(vol.voxel_size), np.array(vol.offset)
        start = [int(v) for v in np.rint(offset / voxel)]
        names, scales = ["z", "y", "x"], list(voxel)
        if lay.kind == "rgb":
            names, scales, start = ["c^", *names], [1.0, *scales], [0, *start]
        source = _lazy_volume_class()(
            vol.array, dimensions=_space(names, scales), voxel_offset=start,
            volume_type="segmentation" if lay.kind == "segmentation" else "image")
        if lay.kind == "segmentation":
            layer = neuroglancer.SegmentationLayer(source=source)
        elif lay.kind == "rgb":
            layer = neuroglancer.ImageLayer(source=source, shader=AFFINITY_SHADER)
        else:
            layer = neuroglancer.ImageLayer(source=source)
        state.layers.append(name=lay.name, layer=layer, visible=lay.visible)
    base = layers[0].volume
    extent = np.array(base.spatial_shape) * np.array(base.voxel_size)  # z, y, x nm
    centre = (np.array(base.offset) + extent / 2) / scale
    state.position = [float(c) for c in centre[::-1]]
    state.cross_section_scale = float(max(extent[1], extent[2]) / scale[1:].min()
                                      / fit_pixels)


def find_browser() -> tuple[str, str]:
    """Paths of Chromium and chromedriver, or a ConfigError saying how to install them
    (or selenium, which drives them)."""
    if importlib.util.find_spec("selenium") is None:
        raise ConfigError("--screenshot: got no selenium module, expected selenium installed "
                          "(pip install 'selenium>=4.20', or the dev extra)")
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver))
                               if p is None)
        raise ConfigError(f"--screenshot: got no {missing} on PATH, expected Chromium and "
                          "chromedriver installed (apt-get install chromium chromium-driver, "
                          "or .ci/install_browser.sh)")
    return browser, driver


def open_viewer(dataset: str | os.PathLike[str], *, port: int = 0,
                bind: str = "127.0.0.1", fit_pixels: int = 800) -> Any:
    """Start neuroglancer's server on ``bind``:``port`` (0: any free port) and return a
    ``neuroglancer.Viewer`` showing ``dataset``; its URL is ``viewer.get_viewer_url()``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise bad_value("--port", port, "an integer in [0, 65535]")
    layers = viewable_layers(dataset)
    import neuroglancer

    neuroglancer.set_server_bind_address(bind, port)
    try:
        viewer = neuroglancer.Viewer()
    except OSError as err:
        raise ConfigError(f"--port: got {port} on --bind {bind!r}, expected a free port on "
                          f"an address of this machine ({err.strerror or err})") from None
    with viewer.txn() as state:
        add_layers(state, layers, fit_pixels=fit_pixels)
    return viewer


def _check_png(path: str | os.PathLike[str]) -> Path:
    target = Path(path).absolute()
    if target.suffix.lower() != ".png":
        raise bad_value("--screenshot", str(path), "a path ending in .png")
    if not target.parent.is_dir():
        raise bad_value("--screenshot", str(path), "a path whose parent directory exists")
    if not os.access(target.parent, os.W_OK):
        raise bad_value("--screenshot", str(path), "a path in a writable directory")
    return target


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int | np.integer)
                             or not 16 <= s <= 8192 for s in size):
        raise bad_value("--size", tuple(size), "two integers (width, height) in [16, 8192]")
    return int(size[0]), int(size[1])


def take_screenshot(viewer: Any, path: str | os.PathLike[str], *,
                    size: Sequence[int] = (1024, 768), timeout: float = 300.0) -> Path:
    """Render ``viewer`` in headless Chromium and write a PNG of its panels to ``path``.

    neuroglancer's screenshot action replies once every visible chunk is loaded and drawn.
    Raises ConfigError (exit 2) if Chromium or chromedriver is missing, and
    AffinityDistError (exit 1) if the browser fails or no image comes within ``timeout``
    seconds.
    """
    target, (width, height) = _check_png(path), _check_size(size)
    browser, driver_path = find_browser()
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="affinity-dist-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                     f"--window-size={width + 64},{height + 64}"):
            options.add_argument(flag)
        try:
            driver = webdriver.Chrome(options=options, service=Service(driver_path))
        except WebDriverException as err:
            raise AffinityDistError(f"screenshot: Chromium {browser} did not start via "
                                    f"{driver_path}: {err.msg or err}") from None
        try:
            driver.get(viewer.get_viewer_url())
            image = _capture(viewer, (width, height), time.monotonic() + timeout)
        finally:
            driver.quit()
    write_atomic(target, image)
    return target


def _capture(viewer: Any, size: tuple[int, int], deadline: float) -> bytes:
    """Ask the connected browser for screenshots until one has ``size`` (neuroglancer
    may need a frame to resize its canvas), or fail at ``deadline``."""
    with viewer.config_state.txn() as config:
        config.show_ui_controls = False
        config.show_panel_borders = False
        config.viewer_size = list(size)
    for _ in range(5):
        done = threading.Event()
        reply: list[Any] = []

        def handler(state: Any, done: threading.Event = done, reply: list[Any] = reply
                    ) -> None:
            reply.append(state.screenshot)
            done.set()

        viewer.async_screenshot(handler)
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise AffinityDistError("screenshot: no image from Chromium before the timeout "
                                    "(WebGL unavailable, or the data loads too slowly)")
        shot = reply[0]
        if (shot.width, shot.height) == size:
            break
    image: bytes = shot.image
    return image


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def view(dataset: str | os.PathLike[str], *, screenshot: str | os.PathLike[str] | None = None,
         port: int = 0, bind: str = "127.0.0.1", size: Sequence[int] = (1024, 768),
         timeout: float = 300.0, block: bool = True) -> str:
    """Serve ``dataset`` in neuroglancer and print the viewer's URL on stdout.

    With ``screenshot``, write a PNG of the viewer rendered in headless Chromium (``size``
    pixels, the xy section) and stop the server. Otherwise, with ``block``, serve until
    Ctrl-C; without it, return at once and keep serving from a background thread (e.g. in
    Jupyter). Returns the URL.
    """
    if screenshot is not None:  # every check before the server starts
        _check_png(screenshot)
        size = _check_size(size)
        find_browser()
    import neuroglancer

    fit = int(0.9 * min(size)) if screenshot is not None else 800
    viewer = open_viewer(dataset, port=port, bind=bind, fit_pixels=fit)
    url: str = viewer.get_viewer_url()
    if screenshot is not None or not block:
        print(url, flush=True)
    if screenshot is not None:
        with viewer.txn() as state:
            state.layout = "xy"
            state.show_axis_lines = False
            state.show_default_annotations = False
        try:
            take_screenshot(viewer, screenshot, size=size, timeout=timeout)
        finally:
            neuroglancer.stop()
    elif block:
        # Ctrl-C and SIGTERM stop the server, also where SIGINT was ignored at start-up
        # (a process started in the background by a non-interactive shell). The handlers
        # are in place before the URL is printed: whoever reads it may signal at once.
        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, _interrupt)
                    for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            print(url, flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log.info("viewer stopped")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            neuroglancer.stop()
    return url
