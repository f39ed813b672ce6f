"""Make a trained model the shipped one: its weights plus the segment thresholds tuned for it.

Copies a run's ``model.pt`` to ``affinity_dist/models/fib25.pt`` (what ``predict`` loads by
default) and ``models/<card>/model.pt``, adding ``segment`` = the thresholds chosen on the
training region (``benchmarks/eval_model.py`` prints them), which ``predict`` copies into the
affinities' ``segment_defaults``. Loaded and written weights-only.

    .venv/bin/python models/ship.py RUN/model.pt --card models/fib25 \\
        --agglomerate 0.5 --cc 0.98
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import torch

from affinity_dist.nn.checkpoint import _save, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TUNED_ON = "fib25_sample2 z < 186"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--card", type=Path, required=True, help="the model card's folder")
    parser.add_argument("--agglomerate", type=float, required=True)
    parser.add_argument("--cc", type=float, required=True)
    args = parser.parse_args()
    load_checkpoint(args.model)  # refuses anything that is not a valid checkpoint
    state = torch.load(args.model, map_location="cpu", weights_only=True)
    state["segment"] = {
        "agglomerate": {"threshold": args.agglomerate, "tuned_on": TUNED_ON,
                        "command": "benchmarks/eval_model.py"},
        "cc": {"threshold": args.cc, "tuned_on": f"{TUNED_ON} (with --min-size 1000)",
               "command": "benchmarks/eval_model.py --method cc"}}
    shipped = REPO / "affinity_dist" / "models" / "fib25.pt"
    _save(shipped, state)
    args.card.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped, args.card / "model.pt")
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    print(f"{shipped} ({digest[:12]}) = {args.card / 'model.pt'}")


if __name__ == "__main__":
    main()
