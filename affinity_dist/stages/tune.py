"""Tune: the scores of many segment thresholds from one merge tree.

``affinity-dist tune --input X.zarr [--truth Y.zarr] [--thresholds T ...]`` builds (or
reuses) the merge tree of ``segment --method agglomerate`` once, then for every threshold
only cuts it and relabels (:mod:`.agglomerate`) and scores the segmentation blockwise
(:mod:`.evaluate`: VOI split and merge, adapted Rand error). It writes the table as JSON
and a PNG plot of VOI split against merge over the thresholds, prints the best threshold
(lowest VOI split + merge) and leaves the segmentation of the best threshold in place.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import EvaluateOptions, SegmentOptions, TuneOptions
from ..runtime.scheduling import LocalScheduler
from ..storage import write_json
from ..storage.location import as_path, is_remote

__all__ = ["plot_tuning", "tune"]

log = logging.getLogger(__name__)


def tune(dataset: str | os.PathLike[str], options: TuneOptions | None = None,
         segment: SegmentOptions | None = None, *, json_path: str | os.PathLike[str] | None
         = None, plot_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
         client: Any | None = None, scheduler: LocalScheduler = "threads",
         progress: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Score every threshold of ``options`` (or its fields as keywords) on the merge tree
    that ``segment`` (its other options) builds; returns the table (rows and best). An
    existing segmentation is replaced only with ``overwrite``, as by segment."""
    from .evaluate import check_report_path, prepare_evaluate, run_evaluate
    from .segment import prepare_segment, run_segment

    o = TuneOptions.of(options, **kwargs)
    seg = segment or SegmentOptions()
    if seg.method != "agglomerate":
        raise ConfigError(f"--method: got {seg.method!r}, expected 'agglomerate' (tune cuts "
                          "its merge tree at every threshold)")
    stem = (Path(as_path(dataset).name) if is_remote(dataset) else Path(dataset)).with_suffix("")
    json_out = Path(json_path) if json_path is not None else Path(f"{stem}-tune.json")
    plot_out = Path(plot_path) if plot_path is not None else Path(f"{stem}-tune.png")
    for path, flag in ((json_out, "--json"), (plot_out, "--plot")):
        check_report_path(path, flag)
    plans = [prepare_segment(dataset, replace(seg, threshold=t), overwrite=overwrite or i > 0)
             for i, t in enumerate(o.thresholds)]  # every threshold checked before any work
    rows = []
    evaluation = None
    for t, plan in zip(o.thresholds, plans, strict=True):
        summary = run_segment(plan, client=client, scheduler=scheduler, progress=progress)
        if evaluation is None:  # the segmentation exists now
            evaluation = prepare_evaluate(dataset, EvaluateOptions(truth=o.truth,
                                                                   labels=o.labels))
        s = run_evaluate(evaluation, client=client, scheduler=scheduler, progress=False)
        rows.append({"threshold": t, "voi_split": s.voi_split, "voi_merge": s.voi_merge,
                     "voi_sum": s.voi_sum, "adapted_rand_error": s.adapted_rand_error,
                     "segments": int(summary.num_segments)})
        log.info("threshold %.3f: VOI split %.4f merge %.4f, adapted Rand %.4f", t,
                 s.voi_split, s.voi_merge, s.adapted_rand_error)
    best = min(rows, key=lambda r: (r["voi_sum"], r["threshold"]))
    if best is not rows[-1]:  # leave the best segmentation in place
        run_segment(prepare_segment(dataset, replace(seg, threshold=best["threshold"]),
                                    overwrite=True),
                    client=client, scheduler=scheduler, progress=progress)
    table = {"dataset": str(dataset), "truth": o.truth or str(dataset), "labels": o.labels,
             "segment": seg.as_dict(), "rows": rows, "best": best,
             "json": str(json_out), "plot": str(plot_out)}
    write_json(json_out, table)
    plot_tuning(rows, best, plot_out)
    return table


def plot_tuning(rows: list[dict[str, Any]], best: dict[str, Any],
                png: str | os.PathLike[str]) -> None:
    """VOI merge (y) against VOI split (x), one point per threshold, the best ringed."""
    from PIL import Image, ImageDraw

    w, h, m = 640, 480, 56
    xs = [r["voi_split"] for r in rows]
    ys = [r["voi_merge"] for r in rows]
    top_x, top_y = max(*xs, 1e-6) * 1.05, max(*ys, 1e-6) * 1.05
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([m, m // 2, w - m // 2, h - m], outline=(0, 0, 0))

    def at(x: float, y: float) -> tuple[float, float]:
        return (m + (w - 1.5 * m) * x / top_x, h - m - (h - 1.5 * m) * y / top_y)

    draw.line([at(x, y) for x, y in zip(xs, ys, strict=True)], fill=(120, 120, 120), width=2)
    for r in rows:
        x, y = at(r["voi_split"], r["voi_merge"])
        ring = 7 if r is best else 3
        draw.ellipse([x - ring, y - ring, x + ring, y + ring],
                     outline=(200, 0, 0) if r is best else (0, 0, 0), width=2)
        draw.text((x + 6, y - 14), f"{r['threshold']:g}", fill=(0, 0, 0))
    draw.text((m, h - m + 10), f"VOI split 0-{top_x:.2f} bits (x), merge 0-{top_y:.2f} (y); "
              f"best threshold {best['threshold']:g}: sum {best['voi_sum']:.3f}",
              fill=(0, 0, 0))
    image.save(png)
