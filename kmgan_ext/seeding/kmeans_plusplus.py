"""km.kmeans_plusplus: greedy k-means++ (D^2 sampling) over every row of a dataset.

Arthur & Vassilvitskii's k-means++ picks each new center among the data with probability
proportional to its squared distance to the nearest center already chosen (D^2 sampling).
The greedy variant (scikit-learn's default) draws ``2 + floor(ln k)`` candidates per center
and keeps the one that lowers the potential ``phi = sum_i w_i min_c ||x_i - c||^2`` most.

Both backends run the same loop on the same random numbers, and differ only in who forms the
(rows, trials) block of squared distances:

* ``"torch"``: a chunked matmul on x's own device. Sampling is a cumsum + searchsorted on a
  device tensor of uniforms drawn up front, the best candidate an argmin on the device, and
  the chosen index written into a device tensor: the loop never waits on the host, so on a
  GPU k centers cost k rounds of kernel launches and no synchronisation.
* ``"cpu"``: the whole loop in one C++ kernel (csrc/cpu/kmeans_plusplus_cpu.cpp) for
  float32/float64 data in host memory: at most one pass over x per center (the chosen
  candidate of center j is folded into the running minimum in the pass that evaluates center
  j + 1's candidates), float64 potentials, no (N, trials) block. A pass does not read the
  rows that the triangle inequality, with a bound on the rounding of the distances, proves
  no candidate can come nearer to: the same bits as reading them, and about half the reads
  on clustered data. The same draws as "torch": it forms the same matmul-form distances and
  draws from the same cumulative sums, up to the order of rounding (see that file).
* ``"faiss"``: ``faiss.pairwise_L2sqr`` (BLAS) on CPU, or faiss-gpu's pairwise distances when
  faiss sees a GPU (``faiss.get_num_gpus() > 0``: one code path for both builds).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .. import _dispatch, _optional
from . import _data

BACKENDS = ("auto", "torch", "cpu", "faiss")

# The (N, trials) block of each candidate's new distances is kept whole when it fits in this
# many bytes (then the chosen candidate's column becomes the running minimum with no second
# pass over x); above it, a second chunked pass recomputes that one column instead.
_KEEP_BYTES = 512 << 20

DistanceBlock = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], None]


def uniforms(seed: int, k: int, trials: int) -> Tensor:
    """The random numbers one seeding consumes, drawn on the CPU so that every backend and
    device sees the same ones: ``u[0, 0]`` picks the first center, ``u[j]`` the candidates
    of center j."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, trials, generator=g, dtype=torch.float64)


def _torch_block(chunk: Tensor, chunk_sq: Tensor, cands: Tensor, cands_sq: Tensor, out: Tensor):
    """out = ||chunk_i||^2 - 2 chunk_i . c_t + ||c_t||^2 (the matmul form; may dip below 0
    by rounding: callers clamp)."""
    torch.addmm(chunk_sq[:, None], chunk, cands.T, beta=1, alpha=-2, out=out)
    out.add_(cands_sq)


def _faiss_block(faiss) -> DistanceBlock:
    gpu_res = faiss.StandardGpuResources() if faiss.get_num_gpus() > 0 else None

    def block(chunk, chunk_sq, cands, cands_sq, out):
        q, b, o = chunk.numpy(), np.ascontiguousarray(cands.numpy()), out.numpy()
        if gpu_res is not None:
            faiss.pairwise_distance_gpu(gpu_res, q, b, D=o)
        else:
            faiss.pairwise_L2sqr(
                q.shape[1], q.shape[0], faiss.swig_ptr(q), b.shape[0], faiss.swig_ptr(b),
                faiss.swig_ptr(o),
            )

    return block


@contextlib.contextmanager
def _loop_settings(rows: _data.Rows, num_threads: int | None, backend: str):
    """Full-precision float32 matmuls on CUDA; the CPU thread count of the loop."""
    if rows.device.type == "cuda":
        # TF32 would add ~1e-3 relative noise to the ||x||^2 - 2 x.c + ||c||^2 form.
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        return
    with _data.cpu_threads(rows, num_threads, faiss_too=backend == "faiss"):
        yield


def _cpu_kernel_why_not(rows: _data.Rows) -> str | None:
    """None when the C++ loop can read x as it is, else why not."""
    if rows.device.type != "cpu":
        return f"x is on {rows.device}; the 'cpu' kernel reads host memory"
    dtype = rows.x.dtype if not rows.is_numpy else torch.from_numpy(np.empty(0, rows.x.dtype)).dtype
    if dtype not in (torch.float32, torch.float64):
        return f"x is {dtype}; the 'cpu' kernel reads float32 or float64 rows"
    err = _dispatch._load_native()
    if err is not None:
        return err
    if not torch._C._dispatch_has_kernel_for_dispatch_key("kmgan_ext::kmeans_plusplus_native", "CPU"):
        return "kmgan_ext._C has no kmeans_plusplus kernel (an old build); reinstall"
    return None


def _contiguous(rows: _data.Rows) -> bool:
    x = rows.x
    return x.flags.c_contiguous if rows.is_numpy else x.is_contiguous()


def resolve_backend(backend: str, rows: _data.Rows) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        why = _cpu_kernel_why_not(rows)
        if why is not None:
            raise ValueError(f"backend 'cpu' cannot seed this x: {why}; use backend='torch'")
        return "cpu"
    faiss = _data.faiss_module()
    if backend == "faiss":
        if faiss is None:
            raise RuntimeError(f"backend 'faiss' needs faiss: {_optional.hint('faiss', 'faiss-cpu')}, or faiss-gpu")
        if rows.device.type != "cpu":
            raise ValueError(
                "backend 'faiss' reads host memory (numpy arrays or CPU tensors); "
                f"x is on {rows.device}: use backend='torch' to seed on the device"
            )
        return "faiss"
    if backend == "auto":
        # CUDA tensors stay on their device. On CPU the C++ loop for float32/float64 rows laid
        # out contiguously (a strided view or a half-precision x would need a whole copy: the
        # torch loop converts it chunk by chunk instead). The torch loop had beaten the faiss
        # one at N=70,000, d=100 (2-core CI machine, best of 5): K=10 0.13 s vs 0.22 s, K=100
        # 2.25 s vs 2.81 s.
        if _cpu_kernel_why_not(rows) is None and _contiguous(rows):
            return "cpu"
        return "torch"
    return backend


def unit(t: Tensor) -> Tensor:
    """Rows scaled to unit length, a zero row left zero (a chunk at a time, never all of x)."""
    n = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    return torch.where(n == 0, t, t / torch.where(n == 0, torch.ones_like(n), n))


class UnitRows:
    """A ``_data.Rows`` whose chunks and taken rows are normalised as they are read: D^2
    sampling on them uses the cosine distance ||x/||x|| - c/||c|| ||^2 = 2 - 2 cos
    (metric="cosine"; a zero row sits at the origin, at distance 1 from every unit center)."""

    def __init__(self, rows: _data.Rows):
        self._rows = rows

    def __getattr__(self, name):
        return getattr(self._rows, name)

    def chunks(self, rows: int, *, check: bool = False):
        for s, ch in self._rows.chunks(rows, check=check):
            yield s, unit(ch)

    def take(self, index: Tensor) -> Tensor:
        return unit(self._rows.take(index))


def greedy_kmeans_plusplus(
    rows: _data.Rows,
    k: int,
    trials: int,
    u: Tensor,
    *,
    weights: Tensor | None = None,
    chunk_size: int | None = None,
    backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """The seeding loop. Returns (indices (k,) int64 on rows.device, potential float64 0-d).

    ``u`` is :func:`uniforms`' (k, trials) array; ``weights`` (N,) non-negative, in the
    compute dtype on rows.device, or None for unit weights.
    """
    if backend == "cpu":
        return _greedy_cpu(rows, u, weights)
    n, dev, cdt = rows.n, rows.device, rows.compute_dtype
    if backend == "faiss":
        block = _faiss_block(_data.faiss_module())
    else:
        block = _torch_block
    rows_per_chunk = chunk_size or rows.default_chunk(trials)
    u = u.to(dev)

    # First center: uniform over rows (proportional to the weights when given).
    first = _first_index(n, u, weights)
    indices = torch.empty(k, dtype=torch.int64, device=dev)
    indices[:1] = first

    c = rows.take(first)
    c_sq = (c * c).sum(1)
    sq = torch.empty(n, dtype=cdt, device=dev)
    closest = torch.empty(n, 1, dtype=cdt, device=dev)
    # NaN/Inf rows would silently give duplicate centers: checked on this first pass, with
    # one host sync after it (not one per chunk).
    finite = torch.ones((), dtype=torch.bool, device=dev)
    for s, ch in rows.chunks(rows_per_chunk, check=True):
        e = s + ch.shape[0]
        finite &= torch.isfinite(ch).all()
        torch.sum(ch * ch, 1, out=sq[s:e])
        block(ch, sq[s:e], c, c_sq, closest[s:e])
    if not bool(finite):
        raise ValueError(f"{rows.name} contains NaN or Inf")
    closest = closest.view(n).clamp_(min=0)
    zero = torch.zeros((), dtype=cdt, device=dev)

    keep = n * trials * torch.finfo(cdt).bits // 8 <= _KEEP_BYTES
    mins = torch.empty(n, trials, dtype=cdt, device=dev) if keep else None
    scratch = None if keep else torch.empty(rows_per_chunk, trials, dtype=cdt, device=dev)
    w = weights
    for j in range(1, k):
        p = closest if w is None else closest * w
        cum = torch.cumsum(p, 0, dtype=torch.float64)
        cand = torch.searchsorted(cum, u[j] * cum[-1]).clamp_(max=n - 1)
        cands = rows.take(cand)
        cands_sq = (cands * cands).sum(1)
        pot = torch.zeros(trials, dtype=torch.float64, device=dev)
        for s, ch in rows.chunks(rows_per_chunk):
            e = s + ch.shape[0]
            m = mins[s:e] if keep else scratch[: e - s]
            block(ch, sq[s:e], cands, cands_sq, m)
            # min(max(d2, 0), closest): clamp's tensor bounds do both in one pass
            torch.clamp(m, min=zero, max=closest[s:e, None], out=m)
            # Per-chunk sums in the compute dtype (torch sums pairwise: ~1e-7 relative error
            # in float32), accumulated across chunks in float64; a float64 sum per chunk cost
            # 3.5x more (0.14 ms vs 0.04 ms per 16384 x 6 block on this CPU).
            pot += (m.sum(0) if w is None else w[s:e] @ m).to(torch.float64)
        best = torch.argmin(pot).view(1)  # first minimum on ties, as numpy's argmin
        indices[j : j + 1] = cand.index_select(0, best)
        if keep:
            closest = mins.index_select(1, best).view(n)
        else:
            b, b_sq = cands.index_select(0, best), cands_sq.index_select(0, best)
            for s, ch in rows.chunks(rows_per_chunk):
                e = s + ch.shape[0]
                m = scratch.view(-1)[: e - s].view(e - s, 1)  # contiguous, for faiss
                block(ch, sq[s:e], b, b_sq, m)
                torch.clamp(m.view(-1), min=zero, max=closest[s:e], out=closest[s:e])
    p = closest if w is None else closest * w
    return indices, p.sum(dtype=torch.float64)


def _first_index(n: int, u: Tensor, weights: Tensor | None) -> Tensor:
    """The first center: uniform over rows, or proportional to the weights (u[0, 0])."""
    if weights is None:
        return (u[0, :1] * n).to(torch.int64).clamp_(max=n - 1)
    cw = torch.cumsum(weights, 0, dtype=torch.float64)
    return torch.searchsorted(cw, u[0, :1].to(cw.device) * cw[-1]).clamp_(max=n - 1)


def _greedy_cpu(rows: _data.Rows, u: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """The C++ loop: x read in place (a numpy array or memmap without a copy; a strided
    tensor is copied once)."""
    x = _data._from_numpy(rows.x) if rows.is_numpy else rows.x
    x = x.contiguous()
    first = int(_first_index(rows.n, u, weights))
    indices, potential, finite, _ = torch.ops.kmgan_ext.kmeans_plusplus_native(x, weights, u, first)
    if not bool(finite):
        raise ValueError(f"{rows.name} contains NaN or Inf")
    return indices, potential


def kmeans_plusplus(
    x: Tensor | np.ndarray,
    k: int,
    *,
    n_local_trials: int | None = None,
    seed: int = 0,
    sample_weight: Tensor | np.ndarray | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    num_threads: int | None = None,
    return_indices: bool = False,
    metric: str = "euclidean",
):
    """k-means++ seeding (Arthur & Vassilvitskii 2007) over **all** N rows of ``x``.

    Center 1 is a uniformly random row; each next center is drawn with probability
    ``w_i D(x_i)^2 / sum_j w_j D(x_j)^2``, D being the distance to the nearest center chosen
    so far. Greedy (the default, as scikit-learn): ``n_local_trials`` candidates are drawn and
    the one minimising the potential ``sum_i w_i D(x_i)^2`` is kept. KM-GAN (Algorithm 1)
    seeds its centers this way over the discriminator features of the whole training set.

    FAISS's own k-means++ initialisation (``faiss.Kmeans`` / ``Clustering``) first subsamples
    the data to ``max_points_per_centroid`` (256 by default) points per centroid; this
    function never subsamples: every candidate's potential is summed over all N rows.

    Args:
        x: (N, d) floating torch tensor (any device) or numpy array, np.memmap included;
            read in chunks of ``chunk_size`` rows, never copied whole (10M x 128 float32
            needs its (N,) norms, (N,) running minima and, when it fits in 512 MiB, an
            (N, n_local_trials) float32 block, besides the data).
        k: number of centers, 1 <= k <= N.
        n_local_trials: candidates per center; None = ``2 + int(ln k)`` (scikit-learn's
            rule); 1 = classic k-means++.
        seed: the same seed gives the same centers (the random numbers are drawn on the CPU,
            so both backends and every device consume the same ones).
        sample_weight: optional (N,) non-negative weights (as scikit-learn's).
        backend: "auto" ("cpu" for contiguous float32/float64 data in host memory, else
            "torch"), "cpu" (the C++ loop: at most one pass over x per center;
            float32/float64 host data, a strided tensor is copied once), "torch" (device-side
            loop, no host sync per center) or "faiss" (host data only; faiss-gpu's distances
            when faiss sees a GPU). "cpu" and "torch" make the same draws (the same centers
            for a seed, up to float64 rounding of the cumulative sums).
        chunk_size: rows per chunk; None bounds the temporaries of a chunk by 256 MiB on CPU
            and 512 MiB on a GPU.
        num_threads: CPU threads of the loop (torch's intra-op threads, and faiss's OpenMP
            threads for backend "faiss"), restored afterwards. None: torch's current
            setting (torch.get_num_threads()), for faiss too.
        return_indices: also return the chosen row indices.
        metric: "euclidean" or "cosine": D^2 sampling on the sphere, with the distance
            ``||x/||x|| - c/||c|| ||^2 = 2 - 2 cos`` (the dist2 of assign's cosine metric;
            rows are normalised chunk by chunk as they are read). The centers returned are
            still rows of x as they are (normalise them for spherical k-means).

    Returns:
        centers (k, d): rows of x, with x's dtype: a tensor on x's device for a tensor x, a
        numpy array for a numpy x. With ``return_indices``, ``(centers, indices)``, indices
        int64 (a tensor on x's device, or a numpy array).

    Distances are formed in float32 (float64 for float64 x; half-precision rows are widened
    chunk by chunk).
    """
    rows = _data.Rows("x", x)
    k = _data.check_k("k", k, rows.n)
    trials = _data.check_positive_int("n_local_trials", n_local_trials, allow_none=True)
    trials = trials or _data.default_trials(k)
    seed = _data.check_seed(seed)
    chunk_size = _data.check_positive_int("chunk_size", chunk_size, allow_none=True)
    num_threads = _data.check_positive_int("num_threads", num_threads, allow_none=True)
    cosine = _metric_is_cosine(metric)
    asked = backend
    backend = resolve_backend(backend, rows)
    if cosine and backend == "cpu":
        # The C++ loop reads x's rows as they are; the sphere's rows are normalised chunk by
        # chunk by the torch loop (UnitRows).
        if asked == "cpu":
            raise ValueError("metric='cosine' runs on backend 'torch' (or 'auto'), not 'cpu'")
        backend = "torch"
    if backend == "faiss":
        rows.compute_dtype = torch.float32  # faiss computes in float32 only
    weights = None
    if sample_weight is not None:
        weights = check_weights(sample_weight, rows)
    u = uniforms(seed, k, trials)
    sampled = UnitRows(rows) if cosine else rows
    with _loop_settings(rows, num_threads, backend):
        indices, _ = greedy_kmeans_plusplus(
            sampled, k, trials, u, weights=weights, chunk_size=chunk_size, backend=backend
        )
    centers = rows.like_x(rows.take(indices))
    if return_indices:
        return centers, rows.index_like_x(indices)
    return centers


def _metric_is_cosine(metric: object) -> bool:
    from .._checks import metric as check_metric

    return check_metric(metric)


def check_weights(sample_weight: object, rows: _data.Rows) -> Tensor:
    if isinstance(sample_weight, np.ndarray):
        w = torch.from_numpy(np.asarray(sample_weight, dtype=np.float64))
    elif isinstance(sample_weight, Tensor):
        w = sample_weight.detach()
    else:
        raise TypeError(
            f"sample_weight must be a tensor or numpy array, got {type(sample_weight).__name__}"
        )
    if w.shape != (rows.n,):
        raise ValueError(f"sample_weight must have shape ({rows.n},), got {tuple(w.shape)}")
    if not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"sample_weight must be floating or integer, got {w.dtype}")
    w = w.to(device=rows.device, dtype=rows.compute_dtype)
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()) or not bool(w.sum() > 0):
        raise ValueError("sample_weight must be finite, non-negative and not all zero")
    return w
