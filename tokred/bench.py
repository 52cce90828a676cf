"""Latency and memory measurement: interleaved timing, KV-cache size, peak memory.

- :func:`time_interleaved` runs the variants being compared round-robin (this machine is shared and noisy: a
  background burst then hits every variant alike instead of one), after warm-up rounds, and returns
  :class:`TimingStats` (median and quartiles) per variant. CUDA events time GPU work; ``time.perf_counter``
  times the rest.
- :func:`kv_cache_bytes` and :func:`kv_cache_lengths` read a transformers cache object (``DynamicCache`` and
  friends: ``cache.layers[i].keys/values``, transformers 5.x) or the legacy tuple format.
- :func:`peak_memory` measures peak memory of a block: peak resident set size on CPU, peak allocated bytes on
  CUDA.

torch is imported only when a CUDA path is taken; the module itself imports neither torch nor transformers.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "MemoryStats",
    "TimingStats",
    "kv_cache_bytes",
    "kv_cache_lengths",
    "peak_memory",
    "time_interleaved",
]


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's default ``"linear"`` method)."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated timings of one variant, in seconds.

    Attributes:
        median: Median (the number to report).
        p25: 25th percentile (linear interpolation, as ``numpy.percentile``).
        p75: 75th percentile; ``p75 - p25`` is the spread to report.
        min: Fastest run (least disturbed by other load).
        max: Slowest run.
        mean: Arithmetic mean (sensitive to outliers on a noisy machine).
        n: Number of timed runs.
        samples: Every timed run, in the order it ran.
    """

    median: float
    p25: float
    p75: float
    min: float
    max: float
    mean: float
    n: int
    samples: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> TimingStats:
        """Summarise ``samples`` (seconds).

        Raises:
            ValueError: If ``samples`` is empty.
        """
        if len(samples) == 0:
            raise ValueError("TimingStats needs at least one sample")
        ordered = sorted(float(s) for s in samples)
        return cls(
            median=_quantile(ordered, 0.5),
            p25=_quantile(ordered, 0.25),
            p75=_quantile(ordered, 0.75),
            min=ordered[0],
            max=ordered[-1],
            mean=math.fsum(ordered) / len(ordered),
            n=len(ordered),
            samples=tuple(float(s) for s in samples),
        )

    @property
    def iqr(self) -> float:
        """Interquartile range ``p75 - p25``."""
        return self.p75 - self.p25

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``samples`` as a list) plus ``iqr``."""
        out = asdict(self)
        out["samples"] = list(self.samples)
        out["iqr"] = self.iqr
        return out


def _round_order(names: Sequence[str], round_index: int, rotate: bool) -> list[str]:
    """Order of one round: every variant once, starting at variant ``round_index mod k`` when rotating."""
    shift = round_index % len(names) if rotate else 0
    return [*names[shift:], *names[:shift]]


def _contains_cuda_tensor(obj: Any, depth: int = 3) -> bool:
    """Whether ``obj`` is, or (within ``depth`` levels of mappings/sequences) holds, a CUDA tensor."""
    torch = sys.modules.get("torch")
    if torch is None:  # no tensor can exist if torch was never imported
        return False
    if isinstance(obj, torch.Tensor):
        return bool(obj.is_cuda)
    if depth <= 0:
        return False
    if isinstance(obj, Mapping):
        items: list[Any] = list(obj.values())[:16]
    elif isinstance(obj, (list, tuple)):
        items = list(obj[:16])
    else:
        return False
    return any(_contains_cuda_tensor(x, depth - 1) for x in items)


def _time_cpu(fn: Callable[[], Any], sync: Callable[[], Any] | None) -> float:
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


def _time_cuda(fn: Callable[[], Any], sync: Callable[[], Any] | None) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    if sync is not None:
        sync()
    return float(start.elapsed_time(end)) / 1000.0


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 2,
    repeats: int = 10,
    sync: Callable[[], Any] | None = None,
    use_cuda_events: bool | None = None,
    rotate: bool = True,
) -> dict[str, TimingStats]:
    """Time several variants interleaved round-robin.

    Each round runs every variant once; ``warmup`` untimed rounds come first, then ``repeats`` timed rounds.
    With ``rotate`` (default) round ``i`` starts at variant ``i mod k`` (for variants ``a, b, c``: ``abc``,
    ``bca``, ``cab``, ...), so no variant always runs right after the same other one (cache and clock effects
    are spread evenly).

    Timer: CUDA events (``torch.cuda.Event(enable_timing=True)``, recorded around the call on the current
    stream, then synchronised) when ``use_cuda_events`` is true, or when it is ``None`` and a warm-up call
    returned a CUDA tensor (searched a few levels into mappings, lists, tuples, e.g. a ``ModelOutput``).
    Otherwise ``time.perf_counter`` around the call and ``sync`` (pass ``torch.cuda.synchronize`` when timing GPU
    work this way, so the asynchronous kernels are included). With ``warmup=0`` auto-detection has nothing to
    inspect: perf_counter is used unless ``use_cuda_events=True``.

    Args:
        fns: Variant name -> zero-argument callable (e.g. ``lambda: model(**inputs)``); result order follows it.
        warmup: Untimed rounds before timing (compilation, allocator and cache warm-up).
        repeats: Timed rounds; each variant gets exactly ``repeats`` samples.
        sync: Called after each call, inside the timed region in perf_counter mode, after the events otherwise.
        use_cuda_events: Force (``True``) or forbid (``False``) CUDA events; ``None`` detects.
        rotate: Rotate the starting variant each round (otherwise the same order every round).

    Returns:
        Variant name -> :class:`TimingStats` (seconds).

    Raises:
        ValueError: No variants, ``warmup < 0`` or ``repeats < 1``.
    """
    names = list(fns)
    if not names or warmup < 0 or repeats < 1:
        raise ValueError(f"need >= 1 variant, warmup >= 0 and repeats >= 1 (got {len(names)}, {warmup}, {repeats})")
    on_cuda = False
    for r in range(warmup):
        for name in _round_order(names, r, rotate):
            on_cuda = _contains_cuda_tensor(fns[name]()) or on_cuda
            if sync is not None:
                sync()
    timer = _time_cuda if (on_cuda if use_cuda_events is None else use_cuda_events) else _time_cpu
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in _round_order(names, r, rotate):
            samples[name].append(timer(fns[name], sync))
    return {name: TimingStats.from_samples(samples[name]) for name in names}


# ----------------------------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------------------------


# Tensors of a cache layer that hold cached keys/values: the full-precision states, plus the quantized storage of
# transformers' quantized layers (``QuantizedLayer`` keeps recent tokens in ``keys``/``values`` as a residual).
def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, or a tuple/list of them, e.g. FP8 ``(data, scale)``)."""
    if obj is None:
        return 0
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(x) for x in obj)
    numel, element_size = getattr(obj, "numel", None), getattr(obj, "element_size", None)
    if callable(numel) and callable(element_size):
        return int(numel()) * int(element_size())
    return 0


def kv_cache_bytes(cache: Any) -> int:
    """Bytes held by a KV cache's key/value tensors.

    Sums ``numel·element_size`` of each layer's ``keys`` and ``values`` (and the quantized storage of quantized
    layers) over ``cache.layers`` — the transformers 5.x layout (``DynamicCache``, ``StaticCache``,
    ``QuantizedCache``; an ``EncoderDecoderCache`` counts both its self- and cross-attention caches) — or over a
    legacy ``((k, v), ...)`` tuple. Uninitialised and ``None`` layers count 0. A ``StaticCache`` counts its
    whole pre-allocated buffer (the memory it holds), not only the filled positions. Not counted: linear-attention
    conv/recurrent states, sparse-attention indexer keys, allocator slack.

    Args:
        cache: A model output's cache (``tokred.adapters.hf.output_cache(outputs)``) or a cache object.

    Returns:
        Bytes (0 for ``None``).

    Raises:
        TypeError: If ``cache`` is not a recognised cache.
    """
    from tokred.adapters import hf

    return sum(_tensor_bytes(t) for layer in hf.cache_layers(cache) for t in hf.cache_layer_tensors(layer))


def kv_cache_lengths(cache: Any) -> list[int]:
    """Number of cached tokens in each layer.

    Layers differ when a strategy drops tokens inside the LLM with real KV-cache eviction. Reads
    ``keys.shape[-2]`` (the tokens stored, bounded by the window for sliding-window layers); static layers count
    only their filled positions and quantized layers their ``get_seq_length()``. For an
    ``EncoderDecoderCache`` the self-attention layers come first, then the cross-attention ones.

    Args:
        cache: A model output's cache (``tokred.adapters.hf.output_cache(outputs)``) or a cache object.

    Returns:
        One length per layer (empty for ``None``); feed it to ``tokred.flops.decode_step_flops``.

    Raises:
        TypeError: If ``cache`` is not a recognised cache.
    """
    from tokred.adapters import hf

    return [hf.cache_layer_length(layer) for layer in hf.cache_layers(cache)]


# ----------------------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MemoryStats:
    """Peak memory of a :func:`peak_memory` block (filled in when the block exits).

    Attributes:
        device: ``"cpu"`` or the CUDA device (``"cuda:0"``).
        method: What was read (see :func:`peak_memory`).
        baseline_bytes: Resident (CPU) or allocated (CUDA) bytes when the block started.
        peak_bytes: Highest value during the block.
        exact: ``False`` when the peak could not be reset at the start (then ``peak_bytes`` may include an older,
            higher peak and :attr:`delta_bytes` is an upper bound).
    """

    device: str
    method: str = ""
    baseline_bytes: int = 0
    peak_bytes: int = 0
    exact: bool = True

    @property
    def delta_bytes(self) -> int:
        """Peak above the baseline: the extra memory the block needed at its worst moment."""
        return max(0, self.peak_bytes - self.baseline_bytes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict plus ``delta_bytes``."""
        return {**asdict(self), "delta_bytes": self.delta_bytes}


_PROC_STATUS = "/proc/self/status"
_active: list[tuple[MemoryStats, Callable[[], int]]] = []  # open blocks, for nesting


def _proc_status_bytes(field_name: str) -> int | None:
    try:
        with open(_PROC_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to the current RSS (Linux >= 4.0, ``clear_refs`` value 5)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_reader() -> tuple[Callable[[], int], int, str, bool]:
    """(peak reader, baseline, method, exact) for CPU, resetting the peak if the kernel allows it."""
    if _proc_status_bytes("VmHWM") is None:  # no procfs: lifetime max RSS, never reset
        import resource

        scale = 1 if sys.platform == "darwin" else 1024

        def reader() -> int:
            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale

        return reader, reader(), "getrusage ru_maxrss (lifetime peak, not reset)", False
    exact = _reset_cpu_peak()
    method = "VmHWM peak RSS (reset via /proc/self/clear_refs)" if exact else "VmHWM peak RSS (not reset)"

    def hwm() -> int:
        return _proc_status_bytes("VmHWM") or 0

    return hwm, _proc_status_bytes("VmRSS") or 0, method, exact


def _cuda_peak_reader(device: Any) -> tuple[Callable[[], int], int, str, bool]:
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)

    def reader() -> int:
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))

    return reader, int(torch.cuda.memory_allocated(device)), "torch.cuda.max_memory_allocated", True


@contextmanager
def peak_memory(device: Any = "cpu") -> Iterator[MemoryStats]:
    """Measure the peak memory of the enclosed block.

    CPU (``device="cpu"``): the process's peak resident set size, ``VmHWM`` in ``/proc/self/status``, after
    resetting it to the current RSS on entry (``echo 5 > /proc/self/clear_refs``); the baseline is ``VmRSS`` on
    entry. This sees every page the process touched — torch's CPU tensors included, which ``tracemalloc`` does
    not — but also other threads' allocations, and it counts pages, not tensor bytes: memory kept by the
    allocator from earlier is not counted again, allocated-but-untouched memory is not counted at all. Without
    procfs (macOS) the lifetime ``ru_maxrss`` is read and :attr:`MemoryStats.exact` is ``False``.

    CUDA (``device="cuda"``, ``"cuda:1"``, a ``torch.device``): ``torch.cuda.max_memory_allocated`` after
    ``reset_peak_memory_stats``, baseline ``memory_allocated``: tensor bytes from torch's caching allocator
    (reserved-but-free blocks and non-torch allocations excluded).

    Blocks may be nested: resetting the peak for an inner block first folds the current peak into the outer ones.

    Args:
        device: Where to measure.

    Yields:
        A :class:`MemoryStats`, filled in when the block exits.
    """
    is_cuda = str(device).startswith("cuda")
    stats = MemoryStats(device="cpu")
    if is_cuda:
        import torch

        stats.device = str(torch.device(device if ":" in str(device) else f"cuda:{torch.cuda.current_device()}"))
    for outer, outer_reader in _active:  # the reset below would lose their peak so far
        if outer.device == stats.device:
            outer.peak_bytes = max(outer.peak_bytes, outer_reader())
    reader, stats.baseline_bytes, stats.method, stats.exact = (
        _cuda_peak_reader(stats.device) if is_cuda else _cpu_peak_reader()
    )
    stats.peak_bytes = stats.baseline_bytes
    _active.append((stats, reader))
    try:
        yield stats
    finally:
        _active[:] = [entry for entry in _active if entry[0] is not stats]
        stats.peak_bytes = max(stats.peak_bytes, reader())
