"""U-Net configuration: shapes, context, translation equivariance, validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affinity_dist.errors import ConfigError
from affinity_dist.nn.config import UNetConfig, build_model

CONFIGS = {
    "isotropic-2-levels": UNetConfig(num_fmaps=4, fmap_inc_factor=2),
    "anisotropic-1-3-3": UNetConfig(downsample_factors=((1, 3, 3), (1, 3, 3)),
                                    kernel_size=(1, 3, 3), num_fmaps=4, fmap_inc_factor=2),
    "mixed-3-downsamplings": UNetConfig(downsample_factors=((1, 2, 2), (2, 2, 2), (2, 2, 2)),
                                        num_fmaps=3, fmap_inc_factor=2, norm="batch"),
    "long-range-offsets": UNetConfig(num_fmaps=4, offsets=((-1, 0, 0), (0, -1, 0),
                                                           (0, 0, -1), (-2, 0, 0), (0, -4, 0))),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_shapes_and_constant_context(name: str) -> None:
    config = CONFIGS[name]
    model = build_model(config).eval()
    pairs = config.valid_shapes(3)
    for inp, out in pairs:
        assert tuple(i - o for i, o in zip(inp, out, strict=True)) == config.context
        with torch.no_grad():
            y = model(torch.rand(1, 1, *inp))
        assert y.shape == (1, len(config.offsets), *out)
    # consecutive valid shapes differ by the total downsampling factor
    assert tuple(b - a for a, b in zip(pairs[0][0], pairs[1][0], strict=True)) == config.step


def test_known_context_values() -> None:
    assert UNetConfig().context == (24, 40, 40)  # 2 convs of 3 per level, (1,2,2),(2,2,2)
    assert CONFIGS["anisotropic-1-3-3"].context == (0, 79, 79)
    assert UNetConfig(padding="same").context == (0, 0, 0)


@pytest.mark.parametrize("name", ["isotropic-2-levels", "anisotropic-1-3-3",
                                  "mixed-3-downsamplings"])
def test_translation_equivariant_for_shifts_of_the_step(name: str) -> None:
    """What makes blockwise prediction seamless: a tile shifted by the step predicts
    exactly the shifted crop of the bigger tile's output."""
    config = CONFIGS[name]
    torch.manual_seed(0)
    model = build_model(config).eval()
    (small, out), _, (big, _) = config.valid_shapes(3)
    x = torch.rand(1, 1, *big)
    with torch.no_grad():
        whole = model(x)
        for k in (0, 1, 2):
            s = [k * st for st in config.step]
            tile = model(x[..., s[0]:s[0] + small[0], s[1]:s[1] + small[1],
                           s[2]:s[2] + small[2]])
            ref = whole[..., s[0]:s[0] + out[0], s[1]:s[1] + out[1], s[2]:s[2] + out[2]]
            assert float((tile - ref).abs().max()) < 1e-5


def test_invalid_inputs_and_configs() -> None:
    config = UNetConfig()
    with pytest.raises(ConfigError, match="input shape: got"):
        config.output_shape((27, 44, 44))  # 27 - 4 is odd: no (2,.,.) downsampling
    with pytest.raises(ConfigError, match="offsets"):
        UNetConfig(offsets=((0, 0, -1), (0, -1, 0), (-1, 0, 0)))
    with pytest.raises(ConfigError, match="num_fmaps"):
        UNetConfig(num_fmaps=0)
    with pytest.raises(ConfigError, match="downsample_factors"):
        UNetConfig(downsample_factors=((1, 2),))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown key 'levels'"):
        UNetConfig.from_dict({"levels": 3})
    round_trip = UNetConfig.from_dict(CONFIGS["long-range-offsets"].to_dict())
    assert round_trip == CONFIGS["long-range-offsets"]


def test_inference_does_not_import_the_training_code(tmp_path: Path) -> None:
    """Inference workers load checkpoints through nn.checkpoint, never the training code."""
    script = f"""
import sys
import affinity_dist.nn.inference, affinity_dist.stages.predict
from affinity_dist.nn.checkpoint import FORMAT, load_checkpoint, save_model
from affinity_dist.nn.config import UNetConfig, build_model
config = UNetConfig(num_fmaps=2, fmap_inc_factor=2)
path = save_model({str(tmp_path / "m.pt")!r}, build_model(config), config)
affinity_dist.nn.inference.cached_model(str(path), affinity_dist.nn.inference.resolve_device("cpu"))
assert load_checkpoint(path)[2]["format"] == FORMAT == "affinity_dist.checkpoint/1"
print(sorted(m for m in sys.modules if m.startswith("affinity_dist.training")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ship_averages_checkpoints_of_one_configuration(tmp_path: Path) -> None:
    """models/ship.py with several checkpoints ships their mean weights, and refuses
    checkpoints of different configurations."""
    import importlib.util

    from affinity_dist.nn.checkpoint import load_checkpoint

    from .helpers import TINY, tiny_model

    spec = importlib.util.spec_from_file_location(
        "ship", Path(__file__).resolve().parents[1] / "models" / "ship.py")
    assert spec is not None and spec.loader is not None
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    a, b = tiny_model(tmp_path / "a.pt", seed=1), tiny_model(tmp_path / "b.pt", seed=2)
    state = ship.averaged([a, b])
    wa = torch.load(a, weights_only=True)["model_state"]
    wb = torch.load(b, weights_only=True)["model_state"]
    for name, tensor in state["model_state"].items():
        torch.testing.assert_close(tensor, (wa[name] + wb[name]) / 2)
    assert not torch.equal(wa[name], wb[name])
    torch.save(state, tmp_path / "mean.pt")
    load_checkpoint(tmp_path / "mean.pt")  # a valid checkpoint
    other = tiny_model(tmp_path / "c.pt", UNetConfig(downsample_factors=((2, 2, 2),),
                                                      num_fmaps=TINY.num_fmaps))
    with pytest.raises(SystemExit, match="another model configuration"):
        ship.averaged([a, other])
