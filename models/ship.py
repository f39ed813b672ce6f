"""Make a trained model the shipped one: its weights plus the segment thresholds tuned for it.

Copies a run's ``model.pt`` to ``affinity_dist/models/fib25.pt`` (what ``predict`` loads by
default) and ``models/<card>/model.pt``, adding ``segment`` = the thresholds chosen on the
training region (``benchmarks/eval_model.py`` prints them), which ``predict`` copies into the
affinities' ``segment_defaults``, and (where the run did not record it) ``raw_histogram``,
the intensities of its training data (the card's ``config.json``: data and validation
split), which ``predict --normalize`` maps new data onto. Loaded and written weights-only.
With several checkpoints of one run, the shipped weights are their mean (checkpoint
averaging: the last few checkpoints of a run at a constant learning rate, averaged, vary
less than any one of them); the other fields are the last one's.

    .venv/bin/python models/ship.py RUN/model.pt --card models/fib25 \\
        --agglomerate 0.5 --cc 0.98
    .venv/bin/python models/ship.py RUN/model_26000.pt ... RUN/model_30000.pt --card ...
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch

from affinity_dist.nn.checkpoint import _save, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TUNED_ON = "fib25_sample2 z < 186"


def training_histogram(config: Path) -> list[int]:
    """The raw histogram of a run's training part, from its ``config.json``."""
    import json

    from affinity_dist.training.data import Split, open_training_volume, raw_histogram_of

    run = json.loads(config.read_text())
    volumes = [open_training_volume(str(REPO / d)) for d in run["data"]]
    histogram = raw_histogram_of(volumes, Split(**run["validation"]))
    if histogram is None:
        raise SystemExit(f"{config}: float raw, no uint8 histogram")
    return histogram


def averaged(paths: list[Path]) -> dict[str, Any]:
    """The last checkpoint's state with every weight the mean over ``paths``, which must
    share one model configuration."""
    loaded = [load_checkpoint(path) for path in paths]  # refuses invalid checkpoints
    states = [state for _, _, state in loaded]
    state: dict[str, Any] = states[-1]
    for path, (_, config, _) in zip(paths, loaded, strict=True):
        if config != loaded[-1][1]:
            raise SystemExit(f"{path}: another model configuration than {paths[-1]}")
    weights = state["model_state"]
    state["model_state"] = {
        name: torch.stack([s["model_state"][name].double() for s in states]).mean(0)
        .to(tensor.dtype) if tensor.is_floating_point() else tensor
        for name, tensor in weights.items()}
    if len(paths) > 1:
        state["averaged"] = [f"{p.name} (iteration {s.get('iteration', '?')})"
                             for p, s in zip(paths, states, strict=True)]
        for key in ("val_f1", "val_boundary_f1"):  # figures of another set of weights
            state.pop(key, None)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="+", help="a checkpoint, or several of one "
                        "run to average")
    parser.add_argument("--card", type=Path, required=True, help="the model card's folder")
    parser.add_argument("--agglomerate", type=float, required=True)
    parser.add_argument("--cc", type=float, required=True)
    args = parser.parse_args()
    state = averaged(args.model)
    state["segment"] = {
        "agglomerate": {"threshold": args.agglomerate, "tuned_on": TUNED_ON,
                        "command": "benchmarks/eval_model.py"},
        "cc": {"threshold": args.cc, "tuned_on": f"{TUNED_ON} (with --min-size 1000)",
               "command": "benchmarks/eval_model.py --method cc"}}
    if "raw_histogram" not in state:
        state["raw_histogram"] = training_histogram(args.card / "config.json")
    state.setdefault("voxel_size", [10.0, 10.0, 10.0])  # fib25 and gala: 10 nm isotropic
    shipped = REPO / "affinity_dist" / "models" / "fib25.pt"
    _save(shipped, state)
    args.card.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped, args.card / "model.pt")
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    print(f"{shipped} ({digest[:12]}) = {args.card / 'model.pt'}")


if __name__ == "__main__":
    main()
