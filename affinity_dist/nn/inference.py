"""The torch side of prediction: devices, one cached model per worker, the forward kernel.

Imported only where inference runs (workers), never at package import. The kernel
:func:`forward` is pure: raw tiles (uint8 or float) in, affinities (float32 or uint8) out.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from ..errors import ConfigError

__all__ = ["Device", "Precision", "cached_model", "cpu_has_native_bf16", "forward",
           "resolve_device", "resolve_precision"]

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["bf16", "fp32"]
_LOCK = threading.Lock()
_MODELS: dict[tuple[Any, ...], Any] = {}


def _worker_index() -> int | None:
    """The integer name of this Dask worker (LocalCluster names them 0, 1, ...), if any."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return None
    return name if isinstance(name, int) else None


def resolve_device(device: Device) -> torch.device:
    """``auto``: CUDA when this process sees a GPU, else CPU. Several GPUs on one machine
    are shared out by the Dask worker's index (SLURM jobs see only their own GPU)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: got {device!r}, expected 'auto', 'cpu' or 'cuda'")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device: got 'cuda', but this process sees no CUDA GPU "
                          f"(torch {torch.__version__}); expected 'auto' or 'cpu'")
    index = _worker_index()
    return torch.device("cuda", (index or 0) % torch.cuda.device_count())


#: CPU flags of native bfloat16 arithmetic (x86: AVX512-BF16, AMX; Arm: BF16).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (from ``/proc/cpuinfo``; False where it
    cannot be read). Without it bf16 convolutions are emulated: 31x slower than fp32 on an
    AVX2-only AMD EPYC (0.41 vs 12.7 GFLOP/s, shipped model)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and _BF16_FLAGS & set(value.split()):
            return True
    return False


def resolve_precision(precision: str, device_type: str) -> Precision:
    """``auto``: bf16 on CUDA and on CPUs with native bf16, else fp32 (the same affinities
    to within bf16 rounding; on an AVX2 CPU fp32 is the fast one)."""
    if precision in ("bf16", "fp32"):
        return precision  # type: ignore[return-value]
    if precision != "auto":
        raise ConfigError(f"--precision: got {precision!r}, expected 'auto', 'bf16' or 'fp32'")
    return "bf16" if device_type == "cuda" or cpu_has_native_bf16() else "fp32"


def cached_model(path: str, device: torch.device, precision: Precision = "fp32") -> Any:
    """The model of checkpoint ``path`` on ``device``, loaded once per process; with
    ``precision`` "bf16" its weights are cast to bfloat16 once.

    Keyed by path, size and modification time, so a replaced checkpoint is reloaded.
    Tasks carry only the path: the weights never travel with the task graph.

    bf16 weights give the same affinities as fp32 weights under autocast (which casts the
    weights and inputs of every convolution to bf16 at every call; max |diff| 0 on the
    shipped model) with less overhead: shipped model 2.04 -> 2.56 Mvox/s on one thread.
    """
    from .checkpoint import load_checkpoint

    stat = Path(path).stat() if Path(path).is_file() else None
    key = (str(Path(path).resolve()), stat and (stat.st_size, stat.st_mtime_ns), str(device),
           precision)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model, _, _ = load_checkpoint(path)
            model.eval().requires_grad_(False).to(device)
            if precision == "bf16":
                model = model.to(torch.bfloat16)
            # channels-last: measured faster for the 3D convolutions on CPU (bench_predict)
            model = model.to(memory_format=torch.channels_last_3d)
            _MODELS.clear()  # one model per worker: a new checkpoint replaces the old one
            _MODELS[key] = model
    return model


def forward(model: Any, tiles: NDArray[Any], device: torch.device,
            precision: Precision = "bf16", *, as_uint8: bool = False,
            channels: int | None = None) -> NDArray[Any]:
    """Affinities of a batch of raw tiles ``(N, 1, z, y, x)``: float32 in [0, 1], or
    with ``as_uint8`` rounded to 0-255 (as :func:`affinity_dist.predict.to_uint8`).

    uint8 tiles are normalised on the device exactly as in training
    (:func:`affinity_dist.data.normalize_raw`: float32 / 255), so a quarter of the bytes
    are copied and moved; float tiles are used as they are.

    ``precision`` "bf16" computes in bfloat16 (the shipped model was trained under bf16
    autocast; on this CPU 2-4x faster than fp32): with a model whose weights are bf16
    (:func:`cached_model`) directly, else under autocast. "fp32": full precision.
    Inference mode: no autograd state is kept. ``channels``: only the first ones (the
    nearest affinities of a model with auxiliary outputs).
    """
    x = torch.from_numpy(np.ascontiguousarray(tiles)).to(device, non_blocking=True)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    x = x.contiguous(memory_format=torch.channels_last_3d)
    low = precision == "bf16"
    bf16_weights = next(model.parameters()).dtype == torch.bfloat16
    if low and bf16_weights:
        x = x.to(torch.bfloat16)
    with (torch.inference_mode(),
          torch.autocast(device.type, dtype=torch.bfloat16, enabled=low and not bf16_weights)):
        logits = model(x)
        out = torch.sigmoid((logits if channels is None else logits[:, :channels]).float())
        if as_uint8:  # on the device: a quarter of the bytes to move and to write
            out = out.mul_(255).round_().to(torch.uint8)
    result: NDArray[Any] = out.contiguous().cpu().numpy()
    return result
