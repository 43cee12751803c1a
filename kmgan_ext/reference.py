"""Plain-torch ground truth for every op of kmgan_ext (docs/ops.md).

Written for clarity, not speed. Every test and every benchmark imports its expected
values from here, and ``backend="reference"`` routes the public ops here.

Two kinds of functions live here:

* the user-facing formulas (``assign``, ``minibatch_update_``, ``center_loss``, ...), with
  exactly the public signatures; ``center_loss``, ``assigned_distance`` and ``pairwise_l1``
  are differentiable by plain torch autograd, which makes them the second truth the fused
  backward kernels are checked against;
* the backend interface that ``kmgan_ext._ops`` routes to (``center_loss_forward`` and the
  ``*_backward`` functions), in the form every backend module implements: inputs already
  validated and contiguous, gradients explicit.

Accumulation is float64 here (the kernels use float32, float64 for float64 inputs), so the
reference is the best available answer, not a re-run of a kernel's rounding.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "assign",
    "assign_backward",
    "assign_topk",
    "soft_assign",
    "soft_assign_backward",
    "minibatch_update_",
    "minibatch_step_",
    "ema_update_",
    "cluster_sums",
    "center_loss",
    "center_loss_forward",
    "center_loss_backward",
    "assigned_distance",
    "assigned_distance_backward",
    "pairwise_l1",
    "pairwise_l1_backward",
    "kmgan_losses",
    "kmgan_losses_backward",
]

# Rows per chunk when forming distances: bounds the (chunk, K) float64 block in memory.
_CHUNK_ELEMS = 1 << 24


def _acc(t: Tensor) -> Tensor:
    return t.to(torch.float64)


def _out_dtype(x: Tensor) -> torch.dtype:
    """dist2 and losses are float32, float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def squared_distances(x: Tensor, centers: Tensor) -> Tensor:
    """(N, K) float64 matrix ||x_i - c_k||^2, formed from differences (no cancellation).

    The sum runs over the columns in index order, each step rounded to double: one fixed
    order that a kernel can reproduce exactly where labels hinge on float64 rounding
    (torch's own .sum(-1) reorders with the vector width)."""
    xd, cd = _acc(x), _acc(centers)
    out = torch.zeros(x.shape[0], centers.shape[0], dtype=torch.float64, device=x.device)
    for j in range(x.shape[1]):
        t = xd[:, None, j] - cd[None, :, j]
        out += t * t
    return out


def _norms2(t: Tensor) -> Tensor:
    """sum_j t_j^2 per row in float64, j in index order (the kernels' canonical order)."""
    td = _acc(t)
    out = torch.zeros(t.shape[0], dtype=torch.float64, device=t.device)
    for j in range(t.shape[1]):
        out += td[:, j] * td[:, j]
    return out


def _norms(t: Tensor) -> Tensor:
    return _norms2(t).sqrt()


def _cosine_parts(x: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) float64 dot products and ||x_i||^2 ||c_k||^2, sums in index order."""
    xd, cd = _acc(x), _acc(centers)
    dot = torch.zeros(x.shape[0], centers.shape[0], dtype=torch.float64, device=x.device)
    for j in range(x.shape[1]):
        dot += xd[:, None, j] * cd[None, :, j]
    return dot, _norms2(x)[:, None] * _norms2(centers)[None, :]


def cosine_similarities(x: Tensor, centers: Tensor) -> Tensor:
    """(N, K) float64 cos(x_i, c_k) = x_i . c_k / (||x_i|| ||c_k||), 0 where ||x_i|| ||c_k|| == 0.

    A zero row or zero center is orthogonal to everything (cosine 0), never NaN; NaN and Inf
    inputs give NaN (inf / inf)."""
    dot, den2 = _cosine_parts(x, centers)
    return torch.where(den2 == 0, torch.zeros_like(dot), dot / den2.sqrt())


def cosine_keys(x: Tensor, centers: Tensor) -> Tensor:
    """(N, K) float64 cos |cos| = dot |dot| / (||x||^2 ||c||^2) (0 where the denominator is 0):
    the value metric="cosine" labels maximise. It orders the centers as cos does, and uses
    only +, *, / (every sum in index order), which every backend rounds alike; torch.sqrt
    is not correctly rounded on CPU (SLEEF, measured: one ulp off on sqrt(10.847507024424257)),
    so a key with a square root could not be reproduced exactly by a kernel."""
    dot, den2 = _cosine_parts(x, centers)
    return torch.where(den2 == 0, torch.zeros_like(dot), dot * dot.abs() / den2)


def _unit_rows(x: Tensor) -> Tensor:
    """x_i / ||x_i|| in float64, a zero row left zero (spherical k-means' inputs)."""
    n = _norms(x)[:, None]
    return torch.where(n == 0, torch.zeros_like(n), _acc(x) / torch.where(n == 0, torch.ones_like(n), n))


def _renormalize(c: Tensor) -> Tensor:
    """Rows of a float64 (K, d) scaled to unit length; a zero row stays zero."""
    n = c.norm(dim=1, keepdim=True)
    return torch.where(n == 0, c, c / torch.where(n == 0, torch.ones_like(n), n))


# --------------------------------------------------------------------------- assignment
def assign(x: Tensor, centers: Tensor, cosine: bool = False) -> tuple[Tensor, Tensor]:
    """labels[i] = argmin_k ||x_i - c_k||^2 (ties to the lowest k); dist2 = that minimum.

    ``cosine=True`` (metric="cosine"): labels[i] = argmax_k cos(x_i, c_k) (decided on
    ``cosine_keys``; ties to the lowest k, NaN as torch.argmin on -key) and dist2 =
    2 - 2 cos of that center = ||x_i/||x_i|| - c/||c|| ||^2, clamped at 0.

    Distances in float64; torch.min's NaN rule: a row with a NaN distance gets the lowest k
    whose distance is NaN and dist2 NaN (contract 1). dist2 is rounded to float32 (inf past
    its range) while the label stays the float64 argmin (contract 2).

    Returns ``(labels int64 (N,), dist2 float32 (N,))`` (float64 dist2 for float64 x).
    Batched problems, x (B, N, d) with centers (B, K, d): (B, N) outputs, one problem at a
    time (the reference may loop; the kernels take every problem in one launch).
    """
    if x.dim() == 3:
        return _per_problem(lambda xb, cb: assign(xb, cb, cosine), x, centers)
    n, k = x.shape[0], centers.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    dist2 = torch.empty(n, dtype=_out_dtype(x), device=x.device)
    rows = max(1, _CHUNK_ELEMS // max(1, k * max(1, x.shape[1])))
    for s in range(0, n, rows):
        if cosine:
            # torch.min on -key: the lowest k among the maxima, the lowest NaN when any.
            _, idx = (-cosine_keys(x[s : s + rows], centers)).min(dim=1)
            labels[s : s + rows] = idx
            cos = cosine_similarities(x[s : s + rows], centers).gather(1, idx[:, None])[:, 0]
            dist2[s : s + rows] = (2.0 - 2.0 * cos).clamp_min(0).to(dist2.dtype)
            continue
        d = squared_distances(x[s : s + rows], centers)
        # torch.min returns the first index of the minimum: ties go to the lowest k.
        best, idx = d.min(dim=1)
        labels[s : s + rows] = idx
        dist2[s : s + rows] = best.clamp_min(0).to(dist2.dtype)
    return labels, dist2


def _per_problem(fn, x: Tensor, centers: Tensor, cols: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """fn(x[b], centers[b]) -> (labels, dist2) for every problem b, stacked to (B, N, *cols)."""
    b, n = x.shape[0], x.shape[1]
    labels = torch.empty(b, n, *cols, dtype=torch.int64, device=x.device)
    dist2 = torch.empty(b, n, *cols, dtype=_out_dtype(x), device=x.device)
    for i in range(b):
        labels[i], dist2[i] = fn(x[i], centers[i])
    return labels, dist2


def assign_backward(
    grad_dist2: Tensor, x: Tensor, centers: Tensor, labels: Tensor, centers_grad: bool,
    cosine: bool = False,
) -> tuple[Tensor, Tensor]:
    """d dist2_i / d x_i = 2 (x_i - c_{l_i}); the centers get the negated segment sum.

    ``cosine``: dist2 = 2 - 2 cos(x, c), so d/dx = -2 (c / (|x||c|) - cos x / |x|^2) and
    d/dc = -2 (x / (|x||c|) - cos c / |c|^2), both 0 where |x||c| == 0."""
    if cosine:
        xd, cl = _acc(x), _acc(centers)[labels]
        nx, nc = _norms(x), _norms(centers)[labels]
        den = nx * nc
        zero = den == 0
        safe = lambda t: torch.where(zero, torch.ones_like(t), t)  # noqa: E731
        cos = torch.where(zero, torch.zeros_like(den), (xd * cl).sum(1) / safe(den))
        g = torch.where(zero, torch.zeros_like(den), -2.0 * _acc(grad_dist2))
        gx = g[:, None] * (cl / safe(den)[:, None] - (cos / safe(nx * nx))[:, None] * xd)
        gcr = g[:, None] * (xd / safe(den)[:, None] - (cos / safe(nc * nc))[:, None] * cl)
    else:
        diff = _acc(x) - _acc(centers)[labels]
        gx = 2.0 * _acc(grad_dist2)[:, None] * diff
        gcr = -gx
    if centers_grad:
        gc = torch.zeros(centers.shape, dtype=torch.float64, device=x.device)
        gc.index_add_(0, labels, gcr)
        gc = gc.to(centers.dtype)
    else:
        gc = centers.new_empty(0)
    return gx.to(x.dtype), gc


def assign_topk(x: Tensor, centers: Tensor, k: int, cosine: bool = False) -> tuple[Tensor, Tensor]:
    """The k nearest centers of every row, ascending: ``(labels int64 (N, k), dist2 (N, k))``.

    Order: by the float64 distance, ties to the lowest index; NaN distances first (lowest
    index first), so that column 0 is ``assign``'s label and dist2 (torch.argmin's NaN rule).
    dist2 is rounded to float32 (float64 for float64 x), clamped at 0.

    ``cosine``: the k largest cosines, ordered by ``cosine_keys`` descending (the key assign's
    cosine label maximises; NaN first, ties to the lowest index), dist2 = 2 - 2 cos of each,
    clamped at 0: column 0 is ``assign(..., cosine=True)``'s answer.

    Batched problems, x (B, N, d) with centers (B, K, d): (B, N, k) outputs, labels in [0, K)
    of each problem, one problem at a time.
    """
    if x.dim() == 3:
        return _per_problem(lambda xb, cb: assign_topk(xb, cb, k, cosine), x, centers, (k,))
    n = x.shape[0]
    labels = torch.empty(n, k, dtype=torch.int64, device=x.device)
    dist2 = torch.empty(n, k, dtype=_out_dtype(x), device=x.device)
    rows = max(1, _CHUNK_ELEMS // max(1, centers.shape[0] * max(1, x.shape[1])))
    for s in range(0, n, rows):
        if cosine:
            key = -cosine_keys(x[s : s + rows], centers)
            key = torch.where(torch.isnan(key), torch.full_like(key, float("-inf")), key)
            idx = torch.sort(key, dim=1, stable=True).indices[:, :k]
            labels[s : s + rows] = idx
            cos = cosine_similarities(x[s : s + rows], centers).gather(1, idx)
            dist2[s : s + rows] = (2.0 - 2.0 * cos).clamp_min(0).to(dist2.dtype)
            continue
        d = squared_distances(x[s : s + rows], centers)
        # NaN sorts first (key -1 < every distance); a stable sort keeps ties in index order.
        key = torch.where(torch.isnan(d), torch.full_like(d, -1.0), d)
        idx = torch.sort(key, dim=1, stable=True).indices[:, :k]
        labels[s : s + rows] = idx
        dist2[s : s + rows] = d.gather(1, idx).clamp_min(0).to(dist2.dtype)
    return labels, dist2


# --------------------------------------------------------------------------- soft assignment
def soft_scores(dist2: Tensor, kind: str, alpha: float, temperature: float) -> Tensor:
    """The log of the unnormalised responsibility of each distance:
    student_t: -(alpha + 1) / 2 * log(1 + D / alpha) (DEC, Xie et al. 2016, eq. 1);
    softmax: -D / temperature."""
    if kind == "student_t":
        return -0.5 * (alpha + 1.0) * torch.log1p(dist2 / alpha)
    return -dist2 / temperature


def soft_assign(x: Tensor, centers: Tensor, kind: str = "student_t", alpha: float = 1.0,
                temperature: float = 1.0) -> Tensor:
    """(N, K) responsibilities q, rows summing to 1: q_ij = softmax_j(soft_scores(D_ij)), D the
    float64 squared distances. float32 (float64 for float64 x)."""
    s = soft_scores(squared_distances(x, centers), kind, alpha, temperature)
    return torch.softmax(s, dim=1).to(_out_dtype(x))


def soft_assign_backward(grad_q: Tensor, q: Tensor, x: Tensor, centers: Tensor, kind: str,
                         alpha: float, temperature: float, centers_grad: bool
                         ) -> tuple[Tensor, Tensor]:
    """With s = soft_scores(D) and W = dL/dD = q (G - rowsum(G q)) * ds/dD:
    grad_x = 2 (rowsum(W) x - W C), grad_c = 2 (colsum(W) c - W^T X), in float64."""
    qd, g = _acc(q), _acc(grad_q)
    ds = qd * (g - (g * qd).sum(1, keepdim=True))
    if kind == "student_t":
        w = ds * (-0.5 * (alpha + 1.0) / (alpha + squared_distances(x, centers)))
    else:
        w = ds * (-1.0 / temperature)
    xd, cd = _acc(x), _acc(centers)
    gx = 2.0 * (w.sum(1, keepdim=True) * xd - w @ cd)
    gc = (2.0 * (w.sum(0)[:, None] * cd - w.t() @ xd)).to(centers.dtype) if centers_grad else centers.new_empty(0)
    return gx.to(x.dtype), gc


# --------------------------------------------------------------------------- updates
def cluster_sums(x: Tensor, labels: Tensor, k: int, sample_weight: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Per-cluster sums (K, d) float64 and counts (K,) int64 of the rows of x; with
    sample_weight the weighted sums sum_i w_i x_i and the weights (K,) float64."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    if sample_weight is None:
        sums.index_add_(0, labels, _acc(x))
        return sums, torch.bincount(labels, minlength=k)[:k].to(torch.int64)
    w = sample_weight.to(torch.float64)
    sums.index_add_(0, labels, _acc(x) * w[:, None])
    wsum = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, labels, w)
    return sums, wsum


def minibatch_update_(
    centers: Tensor, counts: Tensor, x: Tensor, labels: Tensor, deterministic: bool = False,
    cosine: bool = False, sample_weight: Tensor | None = None,
) -> None:
    """Sculley's mini-batch k-means step, as scikit-learn's MiniBatchKMeans:

    counts_k += m_k;  c_k += (S_k - m_k c_k) / counts_k   for every k with m_k > 0,
    where m_k rows of x carry label k and S_k is their sum. Other centers are untouched.
    The reference is deterministic whatever ``deterministic`` says.

    ``cosine`` (spherical k-means): S_k sums x_i / ||x_i|| (a zero row adds 0) and every
    updated c_k is then renormalised to unit length (a zero result stays zero).

    ``sample_weight`` (float64 counts): scikit-learn's ``_minibatch_update_dense``
    transcribed, for every k whose batch weight w_k = sum_{l_i = k} w_i is > 0:
    ``c_k <- (c_k W_k + sum_{l_i = k} w_i x_i) * (1 / (W_k + w_k)); W_k += w_k``.
    """
    if sample_weight is not None:
        sums, wsum = cluster_sums(_unit_rows(x) if cosine else x, labels, centers.shape[0],
                                  sample_weight)
        hit = wsum > 0
        total = counts + wsum
        c = _acc(centers)
        upd = (c * counts[:, None] + sums) * (1.0 / torch.where(hit, total, 1.0))[:, None]
        if cosine:
            upd = _renormalize(upd)
        centers.copy_(torch.where(hit[:, None], upd, c).to(centers.dtype))
        counts.copy_(torch.where(hit, total, counts))
        return
    sums, m = cluster_sums(_unit_rows(x) if cosine else x, labels, centers.shape[0])
    hit = m > 0
    new_counts = counts + m
    c = _acc(centers)
    upd = c + (sums - m[:, None].to(torch.float64) * c) / new_counts.clamp_min(1)[:, None]
    if cosine:
        upd = _renormalize(upd)
    centers.copy_(torch.where(hit[:, None], upd, c).to(centers.dtype))
    counts.copy_(new_counts)


def minibatch_step_(
    centers: Tensor, counts: Tensor, x: Tensor, deterministic: bool = False, cosine: bool = False,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """assign against the current centers, then minibatch_update_; returns the labels."""
    labels, _ = assign(x, centers, cosine)
    minibatch_update_(centers, counts, x, labels, deterministic, cosine, sample_weight)
    return labels


def ema_update_(
    centers: Tensor,
    cluster_size: Tensor,
    embed_sum: Tensor,
    x: Tensor,
    labels: Tensor,
    decay: float,
    eps: float,
    deterministic: bool = False,
    cosine: bool = False,
    sample_weight: Tensor | None = None,
) -> None:
    """The VQ-VAE codebook EMA (van den Oord et al. 2017, appendix A.1), literally:

        N_k <- decay N_k + (1 - decay) n_k        (every k, also n_k = 0)
        M_k <- decay M_k + (1 - decay) S_k
        n    = sum_k N_k
        N'_k = (N_k + eps) / (n + K eps) * n
        c_k  = M_k / N'_k                          (c_k unchanged where N'_k == 0)

    n_k = number of rows labelled k, S_k their sum. N (cluster_size) and M (embed_sum) are
    stored first; the centers are computed from the stored state (as vector-quantize-pytorch
    does), so they are a function of the state alone. All arithmetic in float64.

    ``cosine`` (as vector-quantize-pytorch's cosine codebook): S_k sums x_i / ||x_i|| and
    c_k = M_k / N'_k is renormalised to unit length (a zero result stays zero).

    ``sample_weight``: n_k is the weight of the rows labelled k and S_k their weighted sum.

    Batched problems (centers (B, K, d), cluster_size (B, K), embed_sum (B, K, d), x
    (B, N, d), labels (B, N) in [0, K), sample_weight (B, N)): problem by problem, each with
    its own total n.
    """
    if centers.dim() == 3:
        for b in range(centers.shape[0]):
            ema_update_(centers[b], cluster_size[b], embed_sum[b], x[b], labels[b], decay, eps,
                        deterministic, cosine,
                        sample_weight[b] if sample_weight is not None else None)
        return
    k = centers.shape[0]
    sums, m = cluster_sums(_unit_rows(x) if cosine else x, labels, k, sample_weight)
    size = decay * _acc(cluster_size) + (1.0 - decay) * m.to(torch.float64)
    total = decay * _acc(embed_sum) + (1.0 - decay) * sums
    cluster_size.copy_(size.to(cluster_size.dtype))
    embed_sum.copy_(total.to(embed_sum.dtype))
    size, total = _acc(cluster_size), _acc(embed_sum)
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    c = _acc(centers)
    keep = (smoothed == 0)[:, None]
    new = total / torch.where(keep, torch.ones_like(smoothed[:, None]), smoothed[:, None])
    if cosine:
        new = _renormalize(new)
    centers.copy_(torch.where(keep, c, new).to(centers.dtype))


# --------------------------------------------------------------------------- center loss
def _side_mean(x: Tensor, labels: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """u = sum_m (c_m + S_m) / (1 + n_m) over all K clusters, differentiable in x."""
    k = centers.shape[0]
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    sums = sums.index_add(0, labels, _acc(x))
    counts = torch.bincount(labels, minlength=k)[:k].to(torch.int64)
    u = ((_acc(centers) + sums) / (1.0 + counts.to(torch.float64))[:, None]).sum(0)
    return u, counts


def center_loss(
    x_real: Tensor,
    labels_real: Tensor,
    centers_real: Tensor,
    x_fake: Tensor,
    labels_fake: Tensor,
    centers_fake: Tensor,
) -> Tensor:
    """KM-GAN Eq. 4: || sum_m (c_m + S_m)/(1 + n_m) - sum_m (ĉ_m + Ŝ_m)/(1 + n̂_m) ||_1.

    Differentiable in x_real and x_fake by plain autograd (centers are buffers).
    """
    u_r, _ = _side_mean(x_real, labels_real, centers_real.detach())
    u_f, _ = _side_mean(x_fake, labels_fake, centers_fake.detach())
    return (u_r - u_f).abs().sum().to(_out_dtype(x_real))


def center_loss_forward(
    x_real: Tensor,
    labels_real: Tensor,
    centers_real: Tensor,
    x_fake: Tensor,
    labels_fake: Tensor,
    centers_fake: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backend interface: (loss, u_real - u_fake (d,), counts_real (K,), counts_fake (K,))."""
    u_r, n_r = _side_mean(x_real, labels_real, centers_real)
    u_f, n_f = _side_mean(x_fake, labels_fake, centers_fake)
    diff = u_r - u_f
    dt = _out_dtype(x_real)
    return diff.abs().sum().to(dt), diff.to(dt), n_r, n_f


def center_loss_backward(
    grad: Tensor,
    u_diff: Tensor,
    x_real: Tensor,
    labels_real: Tensor,
    counts_real: Tensor,
    x_fake: Tensor,
    labels_fake: Tensor,
    counts_fake: Tensor,
) -> tuple[Tensor, Tensor]:
    """dL/dx_real_i = g sign(u_diff) / (1 + n_real[l_i]); the fake side is negated."""
    s = _acc(grad) * torch.sign(_acc(u_diff))  # sign(0) = 0
    gr = s[None, :] / (1.0 + counts_real.to(torch.float64))[labels_real][:, None]
    gf = -s[None, :] / (1.0 + counts_fake.to(torch.float64))[labels_fake][:, None]
    return gr.to(x_real.dtype), gf.to(x_fake.dtype)


# --------------------------------------------------------------------------- assigned distance
_REDUCTIONS = ("fro", "mean", "sq_sum")


def _safe_norm(sq: Tensor) -> Tensor:
    """sqrt whose gradient at 0 is 0 rather than inf * 0 = NaN."""
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), sq * 0)


def assigned_distance(x: Tensor, labels: Tensor, centers: Tensor, reduction: str = "fro") -> Tensor:
    """The pull term of KM-GAN Eq. 5/6, || x - C[labels] ||:

    * ``"fro"``: Euclidean norm of the whole (N, d) difference (the paper's ||.||_2),
    * ``"mean"``: mean over rows of ||x_i - c_{l_i}||_2,
    * ``"sq_sum"``: 0.5 sum_i ||x_i - c_{l_i}||^2 (Wen et al.'s center loss).

    Differentiable by plain autograd in x and centers; the gradient at x == C[labels] is 0.
    """
    diff = _acc(x) - _acc(centers)[labels]
    row_sq = (diff * diff).sum(1)
    if reduction == "fro":
        out = _safe_norm(row_sq.sum())
    elif reduction == "mean":
        out = _safe_norm(row_sq).mean() if x.shape[0] else row_sq.sum()
    elif reduction == "sq_sum":
        out = 0.5 * row_sq.sum()
    else:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return out.to(_out_dtype(x))


def _pull_grad(diff: Tensor, out: Tensor, g: Tensor, reduction: str) -> Tensor:
    """d(g * ||diff||_reduction)/d(x) for diff = x - C[labels], float64; zero where the distance
    is zero. ``out`` is the forward value (used by "fro")."""
    if reduction == "fro":
        return diff * torch.where(out > 0, g / torch.where(out > 0, out, torch.ones_like(out)), out * 0)
    if reduction == "mean":
        r = torch.sqrt((diff * diff).sum(1))
        inv = torch.where(r > 0, 1.0 / torch.where(r > 0, r, torch.ones_like(r)), r * 0)
        return diff * (g * inv / max(1, diff.shape[0]))[:, None]
    if reduction == "sq_sum":
        return diff * g
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def assigned_distance_backward(
    grad: Tensor,
    out: Tensor,
    x: Tensor,
    labels: Tensor,
    centers: Tensor,
    reduction: str,
    centers_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Explicit gradient of assigned_distance; zero where the distance is zero."""
    diff = _acc(x) - _acc(centers)[labels]
    gx = _pull_grad(diff, _acc(out), _acc(grad), reduction)
    if centers_grad:
        gc = torch.zeros(centers.shape, dtype=torch.float64, device=x.device)
        gc.index_add_(0, labels, -gx)
        gc = gc.to(centers.dtype)
    else:
        gc = centers.new_empty(0)
    return gx.to(x.dtype), gc


# --------------------------------------------------------------------------- pairwise L1
def pairwise_l1(a: Tensor, b: Tensor | None = None) -> Tensor:
    """KM-GAN Eq. 7 regularisers, the O(N^2 d) way.

    ``b is None``: sum over ordered pairs i != j of ||a_i - a_j||_1 (L_intra of one batch).
    Otherwise sum over all (i, j) of ||a_i - b_j||_1 (L_inter). The diagonal of the
    within-batch sum is 0, so both are the total of torch.cdist(p=1), whose gradient
    at equal values is 0 (autograd's sign(0) = 0).
    """
    other = a if b is None else b
    ad, od = _acc(a), _acc(other)
    if ad.shape[0] == 0 or od.shape[0] == 0:
        return (ad.sum() * 0 + od.sum() * 0).to(_out_dtype(a))
    return torch.cdist(ad, od, p=1).sum().to(_out_dtype(a))


def _l1_grad_1d(v: Tensor, w: Tensor) -> Tensor:
    """For each v_i: #(w < v_i) - #(w > v_i), columnwise, by sorting w (ties give 0)."""
    ws, _ = torch.sort(w, dim=0)
    vt, wt = v.t().contiguous(), ws.t().contiguous()
    below = torch.searchsorted(wt, vt, right=False)
    above = w.shape[0] - torch.searchsorted(wt, vt, right=True)
    return (below - above).t().contiguous().to(torch.float64)


def pairwise_l1_backward(grad: Tensor, a: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor]:
    """Rank-count gradient (docs/ops.md, KM-GAN losses).

    Within a batch the ordered pairs count each unordered pair twice, so the gradient of a_i
    is 2 (#below - #above); between batches a_i gets #b below - #b above and b_j the mirror.
    """
    g = _acc(grad)
    ad = _acc(a)
    if b is None:
        ga = 2.0 * g * _l1_grad_1d(ad, ad)
        return ga.to(a.dtype), a.new_empty(0)
    bd = _acc(b)
    ga = g * _l1_grad_1d(ad, bd)
    gb = g * _l1_grad_1d(bd, ad)
    return ga.to(a.dtype), gb.to(b.dtype)


# --------------------------------------------------------------------------- KM-GAN loss block
def kmgan_losses(
    f_real: Tensor, f_fake: Tensor, centers_real: Tensor, centers_fake: Tensor, reduction: str = "fro"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backend interface of the KM-GAN loss block (paper Eq. 4-6), composed of the above:

    labels_real = assign(f_real, C), labels_fake = assign(f_fake, C),
    labels_fake_hat = assign(f_fake, C_hat);
    pull_real = ||f_real - C[labels_real]||, pull_fake = ||f_fake - C[labels_fake]|| (reduction
    as assigned_distance); L_D = pull_real - pull_fake, L_G = pull_fake,
    L_center = center_loss(f_real, labels_real, C, f_fake, labels_fake_hat, C_hat).

    Returns (loss_d, loss_g, loss_center, labels_real, labels_fake, labels_fake_hat,
    pulls = (pull_real, pull_fake), u_diff (d,), counts_real (K,), counts_fake (K_hat,)).
    """
    labels_real, _ = assign(f_real, centers_real)
    labels_fake, _ = assign(f_fake, centers_real)
    labels_fake_hat, _ = assign(f_fake, centers_fake)
    pr = _acc(assigned_distance(f_real, labels_real, centers_real, reduction))
    pf = _acc(assigned_distance(f_fake, labels_fake, centers_real, reduction))
    loss_c, u_diff, n_r, n_h = center_loss_forward(
        f_real, labels_real, centers_real, f_fake, labels_fake_hat, centers_fake
    )
    dt = _out_dtype(f_real)
    pulls = torch.stack([pr, pf]).to(dt)
    return ((pr - pf).to(dt), pf.to(dt), loss_c, labels_real, labels_fake, labels_fake_hat, pulls,
            u_diff, n_r, n_h)  # fmt: skip


def kmgan_losses_backward(
    grad_d: Tensor | None,
    grad_g: Tensor | None,
    grad_center: Tensor | None,
    f_real: Tensor,
    f_fake: Tensor,
    centers_real: Tensor,
    labels_real: Tensor,
    labels_fake: Tensor,
    labels_fake_hat: Tensor,
    pulls: Tensor,
    u_diff: Tensor,
    counts_real: Tensor,
    counts_fake: Tensor,
    reduction: str = "fro",
) -> tuple[Tensor, Tensor]:
    """(grad_f_real, grad_f_fake) of g_d L_D + g_g L_G + g_c L_center; None counts as 0.

    L_D = pull_real - pull_fake and L_G = pull_fake, so f_fake's pull gradient is taken with
    weight g_g - g_d; the center-loss part is center_loss_backward's.
    """
    zero = torch.zeros((), dtype=torch.float64, device=f_real.device)
    gd, gg, gc = (zero if g is None else _acc(g).reshape(()) for g in (grad_d, grad_g, grad_center))
    c = _acc(centers_real)
    p = _acc(pulls)
    sgn = torch.sign(_acc(u_diff))  # sign(0) = 0

    def side(x, labels, pull, g_pull, labels_c, counts, g_c):
        grad = _pull_grad(_acc(x) - c[labels], pull, g_pull, reduction)
        w = g_c / (1.0 + counts.to(torch.float64))[labels_c]
        return (grad + w[:, None] * sgn[None, :]).to(x.dtype)

    gr = side(f_real, labels_real, p[0], gd, labels_real, counts_real, gc)
    gf = side(f_fake, labels_fake, p[1], gg - gd, labels_fake_hat, counts_fake, -gc)
    return gr, gf
