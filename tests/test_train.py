"""Training: loss goes down on real data, weights-only checkpoints, resume, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from affinity_dist.errors import ConfigError
from affinity_dist.nn.checkpoint import load_checkpoint
from affinity_dist.training.train import TrainConfig, train

from .helpers import run_cli

SMALL = {"model": {"num_fmaps": 4, "fmap_inc_factor": 2},
         "validation": {"axis": 2, "start": 140}, "checkpoint_every": 10,
         "validation_batches": 2, "num_workers": 0, "learning_rate": 0.003}


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "loss.csv").open()))


def test_twenty_iterations_on_gala_lower_the_loss(tmp_path: Path, gala: Path) -> None:
    run = tmp_path / "run"
    model_path = train([str(gala)], run, iterations=20, config=TrainConfig.from_dict(SMALL),
                       progress=False)
    rows = _rows(run)
    assert [int(r["iteration"]) for r in rows] == [0, 10, 20]
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    assert all(0 <= float(r["val_f1"]) <= 1 and 0 <= float(r["val_boundary_f1"]) <= 1
               for r in rows)
    from PIL import Image

    pixels = np.asarray(Image.open(run / "loss.png").convert("RGB"))
    assert (pixels == (150, 150, 150)).all(axis=-1).any()  # the training curve is drawn
    assert json.loads((run / "config.json").read_text())["model"]["num_fmaps"] == 4
    # weights-only: plain torch refuses arbitrary pickles, and ours loads under it
    state = torch.load(model_path, weights_only=True)
    assert state["iteration"] == 20 and "optimizer_state" not in state
    model, config, _ = load_checkpoint(model_path)
    assert config.num_fmaps == 4 and sum(p.numel() for p in model.parameters()) > 0


def test_resume_continues_at_the_right_iteration(tmp_path: Path, gala: Path) -> None:
    run = tmp_path / "run"
    config = TrainConfig.from_dict({**SMALL, "checkpoint_every": 5})
    train([str(gala)], run, iterations=10, config=config, progress=False)
    first = torch.load(run / "checkpoint.pt", weights_only=True)
    assert first["iteration"] == 10
    train([str(gala)], run, iterations=15, config=config, progress=False)
    assert [int(r["iteration"]) for r in _rows(run)] == [0, 5, 10, 15]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iteration"] == 15
    other = TrainConfig.from_dict({**SMALL, "model": {"num_fmaps": 5, "fmap_inc_factor": 2}})
    with pytest.raises(ConfigError, match="another model configuration"):
        train([str(gala)], run, iterations=20, config=other, progress=False)


def test_a_cooldown_resumed_decays_the_rate_and_keeps_every_checkpoint_model(
        tmp_path: Path, gala: Path) -> None:
    # the first 10 iterations at a constant rate, then a cosine cooldown over 10-20 on resume
    run = tmp_path / "run"
    train([str(gala)], run, iterations=10, progress=False,
          config=TrainConfig.from_dict({**SMALL, "checkpoint_every": 5}))
    cool = TrainConfig.from_dict({**SMALL, "checkpoint_every": 5, "lr_decay": [10, 20],
                                  "lr_final": 0.1, "keep_models": True})
    assert [cool.learning_rate_at(i) for i in (0, 10, 20, 99)] == pytest.approx(
        [0.003, 0.003, 0.0003, 0.0003])
    assert cool.learning_rate_at(15) == pytest.approx(0.00165)  # half way: the mean
    train([str(gala)], run, iterations=20, config=cool, progress=False)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    rates = [g["lr"] for g in state["optimizer_state"]["param_groups"]]
    assert rates == pytest.approx([cool.learning_rate_at(19)] * len(rates))
    kept = sorted(p.name for p in (run / "models").iterdir())
    assert kept == ["model_0000015.pt", "model_0000020.pt"]  # from the resumed run on
    assert (run / "models" / kept[-1]).read_bytes() == (run / "model.pt").read_bytes()
    assert torch.load(run / "models" / kept[0], weights_only=True)["iteration"] == 15
    assert "cosine decay to 0.0003 over iterations 10-20" in (run / "README.md").read_text()


@pytest.mark.parametrize("bad", [{"lr_decay": [5, 5]}, {"lr_decay": [-1, 5]},
                                 {"lr_decay": [1, 2, 3]}, {"lr_decay": [1.5, 3]},
                                 {"lr_final": 2}, {"keep_models": 1},
                                 {"focal_gamma": -1}, {"focal_gamma": True},
                                 {"focal_gamma": 2, "loss": "mse"}])
def test_bad_schedules_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=f"{next(iter(bad))}: got"):
        TrainConfig.from_dict(bad)


def test_focal_loss_weighs_edges_by_how_wrong_they_are() -> None:
    """focal_gamma g: each edge's BCE x (1 - p_t)^g, p_t the probability of its target;
    g = 0 is the plain weighted BCE. A sure right edge then weighs ~nothing beside a
    wrong one (a thin object taught as "same neuron" but predicted as boundary)."""
    from affinity_dist.training.trainer import affinity_loss

    logits = torch.tensor([[4.0, -4.0, 0.0, -1.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    weight = torch.tensor([[1.0, 2.0, 1.0, 1.0, 0.0]])  # the last edge masked
    p = torch.sigmoid(logits)
    p_t = torch.where(target > 0.5, p, 1 - p)
    bce = -torch.log(p_t)
    plain = affinity_loss(TrainConfig(), logits, target, weight)
    torch.testing.assert_close(plain, (bce * weight).sum() / weight.sum())
    for gamma in (1.0, 2.0):
        focal = affinity_loss(TrainConfig(focal_gamma=gamma), logits, target, weight)
        torch.testing.assert_close(
            focal, (bce * (1 - p_t) ** gamma * weight).sum() / weight.sum())
        assert focal < plain
    each = [float(affinity_loss(TrainConfig(focal_gamma=2.0), logits[:, i:i + 1],
                                target[:, i:i + 1], torch.ones(1, 1))) for i in range(2)]
    assert each[0] < 1e-5 and each[1] > 1.0  # sure and right vs sure and wrong


def test_mismatching_checkpoint_is_a_clear_error(tmp_path: Path, gala: Path) -> None:
    run = tmp_path / "run"
    path = train([str(gala)], run, iterations=1, config=TrainConfig.from_dict(SMALL),
                 progress=False)
    state = torch.load(path, weights_only=True)
    state["model_config"]["num_fmaps"] = 6
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="do not fit its model configuration"):
        load_checkpoint(tmp_path / "bad.pt")


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, gala: Path) -> None:
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("batch_size = 1\nlayers = 3\n")
    bad_value = tmp_path / "bad.json"
    bad_value.write_text(json.dumps({"output_shape": [7, 16, 16]}))
    cases = {
        "missing data": (["--data", str(tmp_path / "nope.h5")], "SRC: got"),
        "unknown config key": (["--data", str(gala), "--config", str(bad_key)],
                               "unknown key 'layers'"),
        "bad output shape": (["--data", str(gala), "--config", str(bad_value)],
                             "output_shape: got [7, 16, 16]"),
        "missing config": (["--data", str(gala), "--config", str(tmp_path / "no.toml")],
                           "--config: got"),
        "bad iterations": (["--data", str(gala), "--iterations", "0"], "--iterations: got 0"),
    }
    for name, (args, message) in cases.items():
        result = run_cli("train", *args, "--out", tmp_path / "run")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1 and message in lines[0], (name, result.stderr)
    ckpt = tmp_path / "not_a_checkpoint.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="weights-only torch checkpoint"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "models").rglob("*.toml")),
                         ids=lambda p: p.name)
def test_every_recorded_training_config_loads(path: Path) -> None:
    from affinity_dist.training.train import load_config

    config = load_config(path)
    shape = config.output_shape  # a shape the network produces (valid convolutions)
    assert config.model.valid_shapes(1, minimum_output=shape)[0][1] == shape
    if path.name.startswith("isbi_ft"):  # fine-tuning recipes: their --init's architecture
        from affinity_dist.nn.checkpoint import load_checkpoint

        init = Path(__file__).parents[1] / "models" / "fib25_ft" / "model.pt"
        assert f"--init {init.relative_to(init.parents[2])}" in path.read_text()
        _, shipped, state = load_checkpoint(init)
        assert shipped == config.model
        if config.voxel_size is None:  # sections 7-10 held out, at ISBI's own grid
            assert (config.validation.start, config.validation.stop) == (7, 11)
        else:  # at the shipped model's voxel size: sections 7-11 are planes 35-58
            assert list(config.voxel_size) == state["voxel_size"]
            assert (config.validation.start, config.validation.stop) == (35, 59)
    elif path.name.startswith("isbi"):  # a 2D network of sections: no context across z
        assert config.model.context[0] == 0 and config.model.step[0] == 1
        assert (config.validation.start, config.validation.stop) == (7, 11)
    else:  # fib25 held out from z 186: the 3D recipe, or a 2D network of sections
        assert config.validation.start == 186
        assert shape == (24, 24, 24) or config.model.context[0] == 0


@pytest.mark.parametrize(("depth", "val", "train_part"), [
    (250, (212, 250), [(0, 212)]),  # 15 %: 37.5 -> 38 planes
    (50, (42, 50), [(0, 42)]),  # 7.5 planes, but one output crop (8) at least
    (16, (8, 16), [(0, 8)]),  # one crop each
    (12, (6, 12), [(0, 6)]),  # too thin for two crops: halves (the sampler says so)
])
def test_the_default_holds_out_the_end_of_any_volume(depth: int, val: tuple[int, int],
                                                      train_part: list[tuple[int, int]]
                                                      ) -> None:
    from dataclasses import replace

    split = replace(TrainConfig().validation, at_least=8)
    assert split.bounds((depth, 100, 100), "val") == [val]
    assert split.bounds((depth, 100, 100), "train") == train_part
    assert f"z {val[0]}-{val[1]} of {depth}" in split.describe((depth, 100, 100))


@pytest.mark.parametrize("bad", [{"fraction": 0}, {"fraction": 1.5}, {"fraction": True},
                                 {"fraction": 0.2, "start": 3}, {"fraction": 0.2, "stop": 9}])
def test_a_bad_fraction_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="validation: got"):
        TrainConfig.from_dict({"validation": {"axis": 0, **bad}})


def test_training_with_no_config_holds_out_part_of_any_volume(tmp_path: Path, gala: Path
                                                               ) -> None:
    # gala is 50 sections deep: a fixed slab at z 200 (fib25's) left it no validation part
    result = run_cli("train", "--data", gala, "--out", tmp_path / "run", "--iterations", "2")
    assert result.returncode == 0, result.stderr
    assert "validation on gala_train.h5: z 42-50 of 50 (the last 15%" in result.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["validation"]
    assert saved["fraction"] == 0.15 and saved["at_least"] == 8
    assert "the last 15% of every volume" in (tmp_path / "run" / "README.md").read_text()
