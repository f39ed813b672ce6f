"""Training targets per volume: label-0 semantics, labels masks through the augmentations,
auxiliary long-range affinities and LSDs, fine-tuning from a checkpoint (--init)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from affinity_dist.errors import ConfigError
from affinity_dist.kernels.augment import AugmentConfig
from affinity_dist.nn.checkpoint import load_checkpoint
from affinity_dist.training.data import CropSampler, Split, Targets, open_training_volume
from affinity_dist.training.train import TrainConfig, _Augment, train

from .helpers import run_cli

NEAREST = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
LONG = (*NEAREST, (-2, 0, 0), (0, -4, 0), (0, 0, -4))
SMALL = {"model": {"num_fmaps": 4, "fmap_inc_factor": 2},
         "validation": {"axis": 2, "start": 140}, "checkpoint_every": 5,
         "validation_batches": 2, "num_workers": 0, "learning_rate": 0.003}


def _sampler(volume: object, *, targets: Targets, augment: bool = False,
             inp: tuple[int, int, int] = (12, 40, 40), out: tuple[int, int, int] = (4, 24, 24)
             ) -> CropSampler:
    aug = _Augment(AugmentConfig(misalign_prob=0.5)) if augment else None
    return CropSampler([volume], inp, out, targets=targets,  # type: ignore[list-item]
                       split=Split(axis=2, start=480), augment=aug)


def _poisoned_copy(isbi: Path, tmp_path: Path) -> Path:
    """ISBI with garbage ids in every unannotated voxel (sections 10-29)."""
    path = tmp_path / "poisoned.h5"
    with h5py.File(isbi, "r") as src, h5py.File(path, "w") as dst:
        for key in ("volumes/raw", "volumes/labels/neuron_ids", "volumes/labels/mask"):
            dst[key] = src[key][:]
            dst[key].attrs.update(src[key].attrs)  # the voxel size decides the LSDs
        labels = dst["volumes/labels/neuron_ids"]
        mask = dst["volumes/labels/mask"][:]
        rng = np.random.default_rng(0)
        poison = labels[:]
        poison[mask == 0] = rng.integers(1, 5, int((mask == 0).sum()))
        labels[...] = poison
    return path


def test_isbi_mask_is_found_and_unannotated_sections_never_contribute(
        isbi: Path, tmp_path: Path) -> None:
    clean = open_training_volume(str(isbi), background="boundary")
    poisoned = open_training_volume(str(_poisoned_copy(isbi, tmp_path)), background="boundary")
    assert clean.mask is not None and clean.mask.key == "volumes/labels/mask"
    targets = Targets(LONG, lsd_sigma=16.0, lsd_downsample=1)
    for augment in (False, True):
        a = _sampler(clean, targets=targets, augment=augment)
        b = _sampler(poisoned, targets=targets, augment=augment)
        rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
        for _ in range(6):
            raw1, t1, w1 = a.sample(rng_a)
            raw2, t2, w2 = b.sample(rng_b)
            assert (raw1 == raw2).all() and (w1 == w2).all() and (t1 * w1 == t2 * w2).all()
            assert t1.shape == w1.shape == (6 + 10, 4, 24, 24)
    # without augmentation: output sections in 10-29 weigh nothing
    plain = _sampler(clean, targets=Targets(NEAREST))
    sampled = 0
    for seed in range(40):
        r = np.random.default_rng(seed)
        _, box = plain.box(np.random.default_rng(seed))
        _, _, weight = plain.sample(r)
        z0 = box.start[0] + 4  # the output's first section
        for k in range(4):
            if z0 + k >= 10:
                assert not weight[:, k].any()
                sampled += 1
            elif z0 + k >= 1:  # annotated and not at the crop's -z border: -z edges known
                assert weight[1:, k].any()
    assert sampled > 0


def test_unlinked_sections_teach_nothing_across_z(isbi: Path) -> None:
    """ISBI's ids are 2D per section: with ``sections = "unlinked"`` no edge with a z step
    (nearest or long range) and no shape descriptor weighs anything, the in-plane edges
    of the annotated sections keep their weights, with and without augmentation."""
    targets = Targets(LONG, lsd_sigma=16.0, lsd_downsample=1)
    linked = open_training_volume(str(isbi), background="boundary")
    unlinked = open_training_volume(str(isbi), background="boundary", linked=False)
    z_step = np.array([o[0] != 0 for o in LONG] + [True] * 10)
    for augment in (False, True):
        a = _sampler(linked, targets=targets, augment=augment)
        b = _sampler(unlinked, targets=targets, augment=augment)
        plane = across = 0.0
        for seed in range(12):
            _, ta, wa = a.sample(np.random.default_rng(seed))
            _, tb, wb = b.sample(np.random.default_rng(seed))
            assert not wb[z_step].any()
            across += float(wa[z_step].sum())  # linked: z targets where sections are
            plane += float(wb[~z_step].sum())
            assert (tb[~z_step] * wb[~z_step] == ta[~z_step] * wb[~z_step]).all()
        assert plane > 0 and across > 0


def test_samples_without_annotation_are_drawn_again(isbi: Path) -> None:
    """Two thirds of ISBI is unannotated: with ``redraw`` every sample teaches something,
    and a redrawn sampler gives exactly the first annotated draw of a plain one."""
    volume = open_training_volume(str(isbi), background="boundary", linked=False)
    plain = _sampler(volume, targets=Targets(NEAREST))
    redrawn = CropSampler([volume], (12, 40, 40), (4, 24, 24), targets=Targets(NEAREST),
                          split=Split(axis=2, start=480), redraw=16)
    empty = 0
    for seed in range(10):
        _, _, w = redrawn.sample(np.random.default_rng(seed))
        assert w.any()
        rng = np.random.default_rng(seed)
        while True:  # the plain sampler's draws, until the first that knows an edge
            _, _, first = plain.sample(rng)
            if first.any():
                break
            empty += 1
        assert (first == w).all()
    assert empty > 0  # some draws were empty: the redraw mattered


def test_boundary_volumes_teach_membrane_edges_unknown_volumes_mask_them(gala: Path) -> None:
    targets = Targets(NEAREST, balance=False)
    boundary = _sampler(open_training_volume(str(gala), background="boundary"),
                        targets=targets, inp=(12, 40, 40))
    unknown = _sampler(open_training_volume(str(gala)), targets=targets, inp=(12, 40, 40))
    with h5py.File(gala) as f:
        labels = f["volumes/labels/neuron_ids"][:]
    for seed in range(5):
        _, box = boundary.box(np.random.default_rng(seed))
        _, tb, wb = boundary.sample(np.random.default_rng(seed))
        _, tu, wu = unknown.sample(np.random.default_rng(seed))
        crop = labels[box.slices][4:8, 8:32, 8:32]
        assert wb.all()  # every output edge has its neighbour in the input crop
        zero = crop == 0
        assert not wu[:, zero].any() and (tb[:, zero] == 0).all()
        assert (tb * wu == tu * wu).all()  # where both know the edge, they agree
        assert wb.sum() > wu.sum()


def test_init_fine_tunes_from_a_checkpoint_and_keeps_the_shared_head(
        tmp_path: Path, gala: Path) -> None:
    base = train([str(gala)], tmp_path / "base", iterations=5,
                 config=TrainConfig.from_dict(SMALL), progress=False)
    aux = {**SMALL, "model": {**SMALL["model"], "offsets": [list(o) for o in LONG],
                              "lsds": True}}
    config = TrainConfig.from_dict(aux)
    from affinity_dist.nn.checkpoint import initialise_from
    from affinity_dist.nn.config import build_model

    model = build_model(config.model)
    assert initialise_from(model, config.model, base) == 3
    source, _, _ = load_checkpoint(base)
    mine, theirs = model.state_dict(), source.state_dict()
    assert torch.equal(mine["head.weight"][:3], theirs["head.weight"])
    assert all(torch.equal(mine[k], v) for k, v in theirs.items() if not k.startswith("head"))
    run = tmp_path / "fine"
    path = train([str(gala)], run, iterations=5, config=config, progress=False, init=base)
    _, loaded, _ = load_checkpoint(path)
    assert loaded.lsds and loaded.out_channels == 6 + 10
    first = float(next(iter((run / "loss.csv").read_text().splitlines()[1:])).split(",")[2])
    base_first = float((tmp_path / "base" / "loss.csv").read_text().splitlines()[-1]
                       .split(",")[2])
    assert abs(first - base_first) < 1e-4  # validation: the nearest three, the same weights
    # another architecture is refused in one line
    other = TrainConfig.from_dict({**SMALL, "model": {"num_fmaps": 5, "fmap_inc_factor": 2}})
    with pytest.raises(ConfigError, match=r"--init: got .* num_fmaps 4, expected the "
                                          r"training config's 5"):
        train([str(gala)], tmp_path / "other", iterations=1, config=other, progress=False,
              init=base)


def test_predict_writes_the_nearest_affinities_of_a_model_with_auxiliary_outputs(
        tmp_path: Path, gala: Path) -> None:
    config = TrainConfig.from_dict({**SMALL, "model": {
        **SMALL["model"], "offsets": [list(o) for o in LONG], "lsds": True}})
    model = train([str(gala)], tmp_path / "run", iterations=1, config=config, progress=False)
    data = tmp_path / "d.zarr"
    assert run_cli("ingest", gala, data).returncode == 0
    result = run_cli("predict", "--input", data, "--model", model)
    assert result.returncode == 0, result.stderr
    import zarr

    aff = zarr.open_group(str(data), mode="r")["affinities"]
    assert aff.shape[0] == 3 and aff.attrs["offsets"] == [list(o) for o in NEAREST]


def test_bad_volume_tables_are_refused_in_one_line(tmp_path: Path, gala: Path) -> None:
    cases = {
        "volumes = 3\n": "volumes: got 3",
        '[volumes."gala_train.h5"]\nbackground = "membrane"\n':
            "volumes.gala_train.h5.background: got 'membrane'",
        '[volumes."gala_train.h5"]\ncolour = "red"\n': "volumes.gala_train.h5: got",
        '[volumes."other.h5"]\nbackground = "boundary"\n': "volumes: got 'other.h5'",
        '[volumes."gala_train.h5"]\nmask = "nope"\n': "--data: got 'nope'",
        '[volumes."gala_train.h5"]\nsections = "2d"\n':
            "volumes.gala_train.h5.sections: got '2d'",
        "negative_weight = 0\n": "negative_weight: got 0",
        "lsd_sigma = -1\n": "lsd_sigma: got -1",
    }
    for text, message in cases.items():
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
        result = run_cli("train", "--data", gala, "--out", tmp_path / "run", "--config", cfg,
                         "--iterations", "1")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (
            text, result.stderr)
    result = run_cli("train", "--data", gala, "--out", tmp_path / "run", "--init",
                     tmp_path / "none.pt")
    assert result.returncode == 2 and "--init: got" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_grow_boundary_teaches_the_interface_band_and_keeps_unknown_masked(
        fib25: Path) -> None:
    volume = open_training_volume(str(fib25))
    plain = _sampler(volume, targets=Targets(NEAREST, balance=False), inp=(12, 40, 40))
    grown = _sampler(volume, targets=Targets(NEAREST, balance=False, grow_boundary=1),
                     inp=(12, 40, 40))
    with h5py.File(fib25) as f:
        labels = f["volumes/labels/neuron_ids"]
        for seed in range(4):
            _, box = plain.box(np.random.default_rng(seed))
            _, tp, wp = plain.sample(np.random.default_rng(seed))
            _, tg, wg = grown.sample(np.random.default_rng(seed))
            crop = labels[box.slices][4:8, 8:32, 8:32]
            assert not wg[:, crop == 0].any()  # fib25's few 0 voxels stay unknown
            assert (tg <= tp).all()  # growing only removes "same neuron" edges
            assert tg.sum() < tp.sum() or (tp == tp.flat[0]).all()
            assert (wg >= wp).all()


def test_a_volume_thinner_than_the_input_crop_is_trained_on(gala: Path) -> None:
    """gala (50 sections) under the shipped crop (input 64^3, output 24^3): it used to be
    left out of training silently. Its output crop now lies inside the volume; the context
    beyond is mirrored raw with unknown labels, so edges reaching outside are masked."""
    from affinity_dist.geometry import reflect_indices

    volume = open_training_volume(str(gala), background="boundary")
    sampler = CropSampler([volume], (64, 64, 64), (24, 24, 24),
                          targets=Targets(NEAREST, balance=False),
                          split=Split(axis=0, start=186))
    with h5py.File(gala) as f:
        raw, labels = f["volumes/raw"][:], f["volumes/labels/neuron_ids"][:]
    taught = 0
    for seed in range(8):
        _, box = sampler.box(np.random.default_rng(seed))
        x, target, weight = sampler.sample(np.random.default_rng(seed))
        assert x.shape == (1, 64, 64, 64) and target.shape == (3, 24, 24, 24)
        assert box.start[0] < 0 or box.stop[0] > 50  # the context overhangs in z
        out_z = range(box.start[0] + 20, box.start[0] + 44)
        assert out_z[0] >= 0 and out_z[-1] < 50  # the output crop inside
        index = [reflect_indices(a, b, n) for a, b, n in
                 zip(box.start, box.stop, raw.shape, strict=True)]
        np.testing.assert_allclose(x[0], raw[np.ix_(*index)] / 255, atol=1e-6)  # mirrored
        if out_z[0] == 0:  # the -z edges of the first section reach outside: unknown
            assert not weight[0, 0].any()
        inner = labels[out_z[0]:out_z[-1] + 1, box.start[1] + 20:box.start[1] + 44,
                       box.start[2] + 20:box.start[2] + 44]
        assert (target[:, inner == 0] == 0).all()  # membrane taught as boundary
        taught += int(((target == 0) & (weight > 0)).sum())
    assert taught > 0


def test_a_volume_thinner_than_the_output_crop_is_left_out_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name, z in (("thin.h5", 6), ("ok.h5", 30)):
        with h5py.File(tmp_path / name, "w") as f:
            f["volumes/raw"] = np.full((z, 48, 48), 100, np.uint8)
            f["volumes/labels/neuron_ids"] = np.ones((z, 48, 48), np.uint64)
    volumes = [open_training_volume(str(tmp_path / n)) for n in ("thin.h5", "ok.h5")]
    sampler = CropSampler(volumes, (12, 40, 40), (8, 24, 24), targets=Targets(NEAREST),
                          split=Split(axis=0, start=1000))
    assert {v for v, _ in sampler.choices} == {1}
    assert "thin.h5" in caplog.text and "not sampled" in caplog.text
    with pytest.raises(ConfigError, match="output shape"):
        CropSampler(volumes[:1], (12, 40, 40), (8, 24, 24), targets=Targets(NEAREST),
                    split=Split(axis=0, start=1000))


def test_training_at_the_model_voxel_size_resamples_every_read(isbi: Path,
                                                               tmp_path: Path) -> None:
    """``voxel_size`` in the config: ISBI's 50x4x4 nm crops are read at 10 nm (raw linear,
    labels and mask nearest, as ``predict --resample`` sees raw); masked labels stay
    unread after resampling; the model records the voxel size it was trained at."""
    from affinity_dist.geometry import Box
    from affinity_dist.training.data import resampled_volume

    volume = open_training_volume(str(isbi), background="boundary", linked=False)
    assert resampled_volume(volume, volume.voxel_size) is volume
    at10 = resampled_volume(volume, (10, 10, 10))
    assert at10.voxel_size == (10.0, 10.0, 10.0) and at10.raw.shape == (150, 205, 205)
    assert at10.labels.shape == at10.mask.shape == at10.raw.shape  # type: ignore[union-attr]
    box = Box((0, 3, 5), (15, 11, 13))
    with h5py.File(isbi, "r") as f:
        labels = f["volumes/labels/neuron_ids"][:]
    nearest = [np.floor((np.arange(a, b) + 0.5) * r).astype(int)
               for a, b, r in zip(box.start, box.stop, (0.2, 2.5, 2.5), strict=True)]
    assert np.array_equal(at10.labels.read(box), labels[np.ix_(*nearest)])
    mask = at10.mask.read(Box((48, 0, 0), (52, 1, 1))).ravel()  # type: ignore[union-attr]
    assert mask.tolist() == [1, 1, 0, 0]  # section 9 ends at plane 49
    poisoned = resampled_volume(open_training_volume(
        str(_poisoned_copy(isbi, tmp_path)), background="boundary", linked=False), (10,) * 3)
    a = CropSampler([at10], (44, 44, 44), (4, 4, 4), targets=Targets(NEAREST),
                    split=Split(axis=0, start=35, stop=59), redraw=16)
    b = CropSampler([poisoned], (44, 44, 44), (4, 4, 4), targets=Targets(NEAREST),
                    split=Split(axis=0, start=35, stop=59), redraw=16)
    for seed in range(4):
        raw1, t1, w1 = a.sample(np.random.default_rng(seed))
        raw2, t2, w2 = b.sample(np.random.default_rng(seed))
        assert (raw1 == raw2).all() and (w1 == w2).all() and (t1 * w1 == t2 * w2).all()
        assert w1.any() and not w1[0].any()  # in-plane edges taught, z edges not
    config = TrainConfig.from_dict({**SMALL, "voxel_size": [10, 10, 10],
                                    "validation": {"axis": 0, "start": 35, "stop": 59},
                                    "volumes": {isbi.name: {"background": "boundary",
                                                            "sections": "unlinked"}}})
    path = train([str(isbi)], tmp_path / "run", iterations=2, config=config, progress=False)
    assert load_checkpoint(path)[2]["voxel_size"] == [10.0, 10.0, 10.0]
    with pytest.raises(ConfigError, match="voxel_size: got"):
        TrainConfig.from_dict({**SMALL, "voxel_size": [10, 0, 10]})


def _two_sections(isbi: Path, path: Path, poison: bool) -> Path:
    """ISBI's first 8 sections, annotated on sections 0 and 1 only (the mask says so); with
    ``poison`` every other voxel's label is garbage."""
    with h5py.File(isbi, "r") as src, h5py.File(path, "w") as dst:
        for key in ("volumes/raw", "volumes/labels/neuron_ids", "volumes/labels/mask"):
            dst[key] = src[key][:8]
            dst[key].attrs.update(src[key].attrs)
        mask = np.zeros(dst["volumes/labels/mask"].shape, np.uint8)
        mask[:2] = 1
        dst["volumes/labels/mask"][...] = mask
        if poison:
            labels = dst["volumes/labels/neuron_ids"][:]
            labels[2:] = np.random.default_rng(0).integers(1, 5, labels[2:].shape)
            dst["volumes/labels/neuron_ids"][...] = labels
    return path


def test_fine_tuning_the_shipped_model_on_two_sections(isbi: Path, tmp_path: Path) -> None:
    """From the shipped checkpoint, at its 10 nm, on section 0 with section 1 held out:
    a few iterations lower the validation loss, and garbage labels wherever the mask says
    "not annotated" change nothing (bit for bit: they are never read into a target)."""
    from affinity_dist.stages.predict import default_model

    _, shipped, _ = load_checkpoint(default_model())
    config = TrainConfig.from_dict({
        "model": shipped.to_dict(), "voxel_size": [10, 10, 10], "output_shape": [4, 24, 24],
        "learning_rate": 2e-4, "checkpoint_every": 10, "validation_batches": 4,
        "num_workers": 0, "seed": 2, "validation": {"axis": 0, "start": 5, "stop": 9},
        "volumes": {"two.h5": {"background": "boundary", "sections": "unlinked"}}})
    losses = []
    for poison in (False, True):
        (tmp_path / str(poison)).mkdir()
        data = _two_sections(isbi, tmp_path / str(poison) / "two.h5", poison)
        run = tmp_path / str(poison) / "run"
        train([str(data)], run, iterations=20, config=config, progress=False,
              init=default_model())
        rows = (run / "loss.csv").read_text().splitlines()[1:]
        losses.append([float(r.split(",")[2]) for r in rows])  # validation loss
    assert losses[0] == losses[1]
    assert losses[0][-1] < losses[0][0], losses[0]
    card = (run / "README.md").read_text()  # the model card of the run
    for words in ("Model card: run", "at iteration 20", "10x10x10 nm", "fib25.pt",
                  "50x4x4 nm, resampled to 10x10x10 nm", "unlinked (2D ids)",
                  "`volumes/labels/mask`", "boundary", "axis 0, 5 to 9", "--resample"):
        assert words in card, words
