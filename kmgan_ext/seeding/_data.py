"""The data a seeding routine reads: a torch tensor or a numpy array (np.memmap included).

Seeding reads the whole dataset once per center, so the data are never copied whole: they are
read in row chunks, each converted to the compute dtype on the compute device only for the
time it is used. A 10M x 128 float32 memmap (5 GB) is never resident at once.
"""
from __future__ import annotations

import contextlib
import functools
import math
import mmap
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .. import _checks

_NUMPY_FLOATS = (np.float16, np.float32, np.float64)

# Bytes of per-chunk temporaries (the chunk converted to the compute dtype, and its distance
# block). Seeding makes one pass over x per center, with a handful of torch ops per chunk;
# few large chunks beat cache-sized ones on CPU: at N=70,000, d=100 one addmm over all rows
# took 9.0 ms against 10.6 ms in 16384-row chunks (MKL, 1 thread), and on a loaded machine
# every extra parallel region per step costs a scheduler wait.
_CPU_CHUNK_BYTES = 256 << 20
# On a GPU the whole array is resident anyway; chunks only bound the temporaries.
_CUDA_CHUNK_BYTES = 512 << 20
# A memmap is there because the data should not be resident at once: its chunks (and their
# float64 copies in Lloyd's sums) stay far below a large file.
MEMMAP_CHUNK_BYTES = 8 << 20


@functools.lru_cache(maxsize=None)
def faiss_module():
    """faiss when importable, else None (import kmgan_ext never needs it)."""
    try:
        import faiss
    except Exception:
        return None
    return faiss


def _from_numpy(a: np.ndarray) -> Tensor:
    """torch.from_numpy without its warning for read-only arrays (a memmap opened "r"):
    the rows are only ever read."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _mapping(a: np.ndarray):
    """(the mmap object, a's first byte's offset in it) for a view of a shared file mapping
    (np.memmap opened "r", "r+" or "w+"); None for anything else. A copy-on-write memmap
    ("c") is left alone: dropping its pages would drop the caller's private writes."""
    mm = getattr(a, "_mmap", None)
    if mm is None or getattr(a, "mode", "c") == "c" or not hasattr(mm, "madvise"):
        return None
    try:
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    except (ValueError, TypeError, BufferError):  # a closed mapping
        return None
    return mm, a.__array_interface__["data"][0] - base


def release_pages(a: np.ndarray, start: int = 0, stop: int | None = None) -> None:
    """Drop the resident pages of rows [start, stop) of a memmap from this process
    (madvise MADV_DONTNEED), once they have been read.

    Pages read through a file mapping count in the process's RSS until the kernel needs the
    memory: a pass over a 200 MB memmap leaves 200 MB resident, as if it had been loaded.
    For a shared mapping the data stay in the page cache and in the file, so a later read
    of the same rows faults them back in, unchanged; a no-op for anything but a memmap."""
    found = _mapping(a) if a.ndim and a.shape[0] else None
    if found is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    mm, first = found
    stop = a.shape[0] if stop is None else stop
    lo = first + start * a.strides[0]
    hi = first + (stop - 1) * a.strides[0] + sum((n - 1) * st for n, st in zip(a.shape[1:], a.strides[1:])) + a.itemsize
    lo, hi = min(lo, hi - a.itemsize), max(hi, lo + a.itemsize)  # negative strides
    page = mmap.PAGESIZE
    lo = max(0, lo - lo % page)
    hi = min(len(mm), hi)
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def gather_rows(a: np.ndarray, index: np.ndarray, block_rows: int) -> np.ndarray:
    """a[index] (a copy), read block by block of ``block_rows`` rows of a memmap, each
    block's pages released once read: random rows spread over a large memmap would
    otherwise map (with the kernel's fault-around) most of the file at once."""
    if _mapping(a) is None:
        return np.ascontiguousarray(a[index])
    index = np.asarray(index, dtype=np.int64)
    n = a.shape[0]
    index = np.where(index < 0, index + n, index)
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    out = np.empty((len(index),) + a.shape[1:], dtype=a.dtype)
    edges = np.searchsorted(sorted_index, np.arange(0, n + block_rows, block_rows))
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        if lo < hi:
            out[order[lo:hi]] = a[sorted_index[lo:hi]]
            release_pages(a, b * block_rows, min((b + 1) * block_rows, n))
    return out


class Rows:
    """Chunked, read-only access to the rows of ``x`` in a float compute dtype.

    ``compute_dtype`` is float64 for float64 data and float32 otherwise (half-precision rows
    are widened chunk by chunk, so the distances are never formed in 16-bit arithmetic).
    """

    def __init__(self, name: str, x: object):
        if isinstance(x, Tensor):
            if x.dim() != 2:
                raise ValueError(f"{name} must be 2-D (N, d), got shape {tuple(x.shape)}")
            if x.dtype not in _checks.FLOAT_DTYPES:
                raise TypeError(
                    f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}"
                )
            if x.device.type == "meta":
                raise ValueError(
                    f"{name} is a meta tensor (shapes only, no data): seeding reads the data; "
                    "pass a CPU or CUDA tensor"
                )
            self.is_numpy = False
            self.device = x.device
            self.compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            x = x.detach()
        elif isinstance(x, np.ndarray):
            if x.ndim != 2:
                raise ValueError(f"{name} must be 2-D (N, d), got shape {x.shape}")
            if x.dtype.type not in _NUMPY_FLOATS:
                raise TypeError(f"{name} must be float16, float32 or float64, got {x.dtype}")
            self.is_numpy = True
            self.device = torch.device("cpu")
            self.compute_dtype = torch.float64 if x.dtype == np.float64 else torch.float32
        else:
            raise TypeError(
                f"{name} must be a torch.Tensor or a numpy array (np.memmap included), "
                f"got {type(x).__name__}"
            )
        if x.shape[1] == 0:
            raise ValueError(f"{name} must have at least one column, got shape {tuple(x.shape)}")
        self.name = name
        self.x = x
        self.n, self.d = int(x.shape[0]), int(x.shape[1])

    def default_chunk(self, extra_cols: int = 0) -> int:
        """Rows per chunk so that the chunk and an (rows, extra_cols) block fit the budget."""
        budget = _CUDA_CHUNK_BYTES if self.device.type == "cuda" else _CPU_CHUNK_BYTES
        if isinstance(self.x, np.memmap):
            budget = MEMMAP_CHUNK_BYTES
        per_row = (self.d + extra_cols) * torch.finfo(self.compute_dtype).bits // 8
        return max(1, budget // per_row)

    def chunk(self, start: int, stop: int, *, check: bool = False) -> Tensor:
        """Rows [start, stop) as a contiguous compute-dtype tensor on ``self.device``.

        ``check``: look for NaN/Inf when km.set_debug(True) is on (done on the first pass
        over the data only: it costs a sync)."""
        part = self.x[start:stop]
        if self.is_numpy:
            part = _from_numpy(np.ascontiguousarray(part))
        part = part.to(self.compute_dtype).contiguous()
        if check:
            _checks.finite(self.name, part)
        return part

    def chunks(self, rows: int, *, check: bool = False) -> Iterator[tuple[int, Tensor]]:
        for s in range(0, self.n, rows):
            e = min(s + rows, self.n)
            yield s, self.chunk(s, e, check=check)
            if self.is_numpy:  # the chunk has been used: its mapped pages leave the RSS
                release_pages(self.x, s, e)

    def check_finite(self, always: bool = False) -> None:
        """A pass over the rows looking for NaN/Inf: under km.set_debug(True), or ``always``
        (for routines that read the data many times anyway, where one more pass is cheap)."""
        if _checks.debug_enabled():
            for _ in self.chunks(self.default_chunk(), check=True):
                pass
        elif always:
            for _, part in self.chunks(self.default_chunk()):
                # A finite sum proves every element finite (NaN and +-Inf propagate) in one
                # reduction, ~10x cheaper than isfinite's (N, d) bool tensor (1.7 ms vs 18 ms
                # CPU time at 70,000 x 100 float32); only a sum that overflows needs the
                # element-wise look.
                if part.numel() and not bool(torch.isfinite(part.sum())):
                    if not bool(torch.isfinite(part).all()):
                        raise ValueError(f"{self.name} contains NaN or Inf")

    def take(self, index: Tensor) -> Tensor:
        """The rows at ``index`` (int64 tensor), in the compute dtype, on ``self.device``."""
        if self.is_numpy:
            # only those rows are read (a copy), a memmap's pages released as it goes
            part = gather_rows(self.x, index.cpu().numpy(), self.default_chunk())
            return _from_numpy(part).to(self.compute_dtype)
        return self.x.index_select(0, index.to(self.x.device)).to(self.compute_dtype)

    def like_x(self, rows: Tensor) -> Tensor | np.ndarray:
        """``rows`` returned in x's own kind: a numpy array of x's dtype, or a tensor of x's
        dtype on x's device. Rows of x round-trip exactly (widening is lossless)."""
        if self.is_numpy:
            return rows.detach().cpu().numpy().astype(self.x.dtype, copy=False)
        return rows.to(device=self.x.device, dtype=self.x.dtype)

    def index_like_x(self, index: Tensor) -> Tensor | np.ndarray:
        return index.cpu().numpy() if self.is_numpy else index.to(self.x.device)


def check_k(name: str, k: object, n: int, what: str = "x") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"{name} must be <= the number of rows of {what} ({n}), got {k}")
    return k


def check_positive_int(name: str, v: object, *, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


SEED_LIMIT = 1 << 32


def check_seed(seed: object) -> int:
    """An int in [0, 2**32), as scikit-learn's random_state (torch generators take less than
    2**64, and kmeans_parallel derives per-rank seeds from it)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed must lie in [0, 2**32), got {seed}")
    return int(seed)


def default_trials(k: int) -> int:
    """scikit-learn's greedy k-means++ rule: 2 + floor(ln k) candidates per center."""
    return 2 + int(math.log(k))


@contextlib.contextmanager
def cpu_threads(rows: Rows, num_threads: int | None, *, faiss_too: bool = False):
    """torch's intra-op threads (and faiss's OpenMP threads) for a CPU loop, restored after.

    None: the cores the caller gave torch (torch.get_num_threads()), for faiss too, so one
    setting governs both. (An earlier default of one thread up to N * d = 2**24, chosen on a
    loaded 2-core machine, ran the library on one core while its peers used all of them.)
    """
    if rows.device.type != "cpu":
        yield
        return
    faiss = faiss_module() if faiss_too else None
    before = torch.get_num_threads(), faiss.omp_get_max_threads() if faiss else None
    if num_threads is None and faiss is not None:
        num_threads = before[0]
    if num_threads is not None:
        torch.set_num_threads(num_threads)
        if faiss:
            faiss.omp_set_num_threads(num_threads)
    try:
        yield
    finally:
        if num_threads is not None:
            torch.set_num_threads(before[0])
            if faiss:
                faiss.omp_set_num_threads(before[1])
