"""Correctness checks of the benchmarks: every provider's answer is judged against the
float64 truth from ``kmgan_ext.reference`` before it is timed (bench/_harness.run_provider).

Tolerances follow flash-attention's rule (``tolerances``): twice plain float32 torch's own
error against the float64 truth, or a floor when larger. Losses are checked output by output
and gradient by gradient, so that errors cannot cancel in a sum.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch


# Plain float32 torch's own rows (the providers named here) are the yardstick of
# ``tolerances``: twice their own error cannot fail their own answer, so check_loss holds them
# to YARDSTICK_RTOL of each output's scale instead (float32 rounding is far below it, a bug
# far above). bench/_harness.run_provider names the provider being checked in ``checking``.
YARDSTICKS = ("torch", "kmgan-torch")
YARDSTICK_RTOL = 1e-3
checking = {"provider": None}


def yardstick_tols(want_outputs: Sequence[torch.Tensor]) -> list[float] | None:
    """YARDSTICK_RTOL of each output's scale when the provider being checked is plain torch
    itself (``checking``), else None."""
    if checking["provider"] not in YARDSTICKS:
        return None
    return [YARDSTICK_RTOL * (1 + (float(w.detach().abs().max()) if w.numel() else 0.0)) for w in want_outputs]


class Lazy:
    """A value computed on first use: a case whose rows are all skipped never pays for it."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn, self._done, self._value = fn, False, None

    def __call__(self):
        if not self._done:
            self._value, self._done = self._fn(), True
        return self._value


def close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> tuple[bool, str]:
    """allclose with the worst offender in the message (float64 comparison)."""
    if got is None:
        return False, f"{name}: no value (None)"
    if tuple(got.shape) != tuple(want.shape):
        return False, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g = got.detach().to("cpu", torch.float64)
    w = want.detach().to("cpu", torch.float64)
    if not torch.isfinite(g).all():
        return False, f"{name}: non-finite values"
    err = (g - w).abs()
    allowed = atol + rtol * w.abs()
    if (err <= allowed).all():
        rel = float((err / (w.abs() + atol)).max()) if err.numel() else 0.0
        return True, f"{name} ok (max rel err {rel:.1e})"
    i = int((err - allowed).argmax())
    return False, (
        f"{name}: {int((err > allowed).sum())}/{err.numel()} values off, worst got "
        f"{g.flatten()[i].item():.6g} want {w.flatten()[i].item():.6g} (rtol={rtol}, atol={atol})"
    )


def row_dist64(x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||x_i - c_{labels_i}||^2 in float64 from the differences (exact up to float64)."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    step = max(1, (1 << 24) // max(1, x.shape[1]))
    for s in range(0, x.shape[0], step):
        d = x[s : s + step].double() - c.double()[labels[s : s + step]]
        out[s : s + step] = (d * d).sum(1)
    return out


def nearest64(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, their float64 squared distances): the ground truth of every assignment check.

    Small problems use ``kmgan_ext.reference.assign`` itself. Its (rows, K, d) float64
    differences cost minutes at N*K*d ~ 1e10, so larger ones take the float64 argmin of the
    expanded form ||x||^2 - 2 x.c + ||c||^2, whose rounding (~1e-16 of the norms) is eight
    orders below the float32 tolerance the providers are held to; the distances of the
    chosen labels are then recomputed from differences either way.
    """
    from kmgan_ext import reference

    n, k, d = x.shape[0], c.shape[0], x.shape[1]
    labels = reference.assign(x, c)[0] if n * k * d <= 2e8 else argmin64(x, c)
    return labels, row_dist64(x, c, labels)


def argmin64(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The float64 argmin of ||x||^2 - 2 x.c + ||c||^2 over the centers, by row blocks."""
    n, k = x.shape[0], c.shape[0]
    xd, cd = x.double(), c.double()
    cc = (cd * cd).sum(1)
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    step = max(1, (1 << 26) // max(1, k))
    for s in range(0, n, step):
        xs = xd[s : s + step]
        labels[s : s + step] = ((xs * xs).sum(1, keepdim=True) - 2.0 * xs @ cd.T + cc).argmin(1)
    return labels


def check_labels(
    x: torch.Tensor,
    c: torch.Tensor,
    truth: tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    dist2: torch.Tensor | None = None,
) -> tuple[bool, str]:
    """Labels equal to the truth except near-ties; dist2 (when given) the chosen distance.

    A float32 kernel may pick another center only when the two exact distances are closer
    than float32 can tell apart: about d * 2^-24 relative for the difference form and
    about 2^-24 (|x|^2 + |c|^2) for the expanded GEMM form (FAISS, cuBLAS, torch matmul).
    The allowance is 3e-5 of the distance plus 1e-6 of |x_i|^2 + |c|^2.
    """
    ref_labels, best = truth
    n, k = x.shape[0], c.shape[0]
    if labels is None or tuple(labels.shape) != (n,):
        return False, f"labels shape {None if labels is None else tuple(labels.shape)} != ({n},)"
    labels = labels.to(x.device, torch.int64)
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        return False, "labels out of [0, K)"
    chosen = row_dist64(x, c, labels)
    xx = row_dist64(x, torch.zeros_like(c[:1]), torch.zeros_like(labels))
    cc = (c.double() ** 2).sum(1)
    scale = xx + torch.maximum(cc[labels], cc[ref_labels])
    allow = 3e-5 * best + 1e-6 * scale
    bad = chosen - best > allow
    differ = int((labels != ref_labels).sum())
    if bad.any():
        i = int(bad.nonzero()[0])
        return False, (
            f"{int(bad.sum())}/{n} labels not the argmin beyond float32 near-ties (row {i}: "
            f"chosen {chosen[i].item():.8g} vs best {best[i].item():.8g})"
        )
    msg = f"labels = reference ({differ} near-ties differ)"
    if dist2 is not None:
        if tuple(dist2.shape) != (n,):
            return False, f"dist2 shape {tuple(dist2.shape)} != ({n},)"
        d2 = dist2.to(x.device, torch.float64)
        err = (d2 - chosen).abs()
        tol = 1e-4 * chosen + 1e-6 * scale + 1e-6
        if not torch.isfinite(d2).all() or (err > tol).any():
            i = int((err - tol).argmax())
            return False, msg + f"; dist2 off at row {i}: {d2[i].item():.8g} vs {chosen[i].item():.8g}"
        msg += "; dist2 ok"
    return True, msg


def loss_and_grads(fn: Callable[..., torch.Tensor], leaves: Sequence[torch.Tensor]):
    """fn(*copies of leaves) and the gradients of its value w.r.t. those copies."""
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    loss = fn(*copies)
    loss.backward()
    return loss.detach(), [c.grad for c in copies]


def tolerances(plain, want, floors: Sequence[float]) -> list[float]:
    """Absolute tolerances for (value, grad...): twice plain float32 torch's own error
    against the float64 truth, or the floor when larger (flash-attention's rule; DESIGN.md:
    never less exact than what the user would write). ``plain`` None: the floors."""
    if plain is None:
        return list(floors)
    (pl, pg), (wl, wg) = plain, want
    errs = [(pl.double() - wl.double()).abs().max()]
    errs += [(g.double() - w.double()).abs().max() for g, w in zip(pg, wg)]
    return [max(f, 2.0 * float(e)) for f, e in zip(floors, errs)]


def check_loss(out, want, tols: Sequence[float], names: Sequence[str]) -> tuple[bool, str]:
    """Value and gradients within ``tols`` (absolute, see ``tolerances``) of the truth."""
    (loss, grads), (wl, wg) = out, want
    got = [loss] + list(grads)
    exp = [wl] + list(wg)
    own = yardstick_tols(exp)
    if own is not None:
        ok, msg = all_ok(*(close(nm, g, w, rtol=0.0, atol=t) for nm, g, w, t in zip(names, got, exp, own)))
        return ok, msg + f" (plain torch, the yardstick: within {YARDSTICK_RTOL:g} of each scale)"
    return all_ok(*(close(nm, g, w, rtol=0.0, atol=t) for nm, g, w, t in zip(names, got, exp, tols)))


def all_ok(*results: tuple[bool, str]) -> tuple[bool, str]:
    return all(r[0] for r in results), "; ".join(r[1] for r in results)


def lloyd(x: torch.Tensor, c: torch.Tensor, niter: int, dtype=torch.float64,
          empty_rule: str = "farthest") -> tuple[torch.Tensor, list[float]]:
    """Lloyd's iterations from the centers c, computed in ``dtype``; the final centers and the
    inertia (float64, from differences) of the centers before each iteration and after the
    last. A cluster left empty is refilled by ``empty_rule``:

    * "farthest", scikit-learn's: it takes the farthest row (the j-th empty cluster the j-th
      farthest), which leaves its old cluster;
    * "faiss", faiss's (``faiss_split``): a large cluster is split in two.

    In float64 it is the truth of every Lloyd check (``check_lloyd``); in float32 it is plain
    torch's Lloyd as a user writes it (the matmul form's argmin, index_add means), the
    yardstick of the tolerances.
    """
    if empty_rule not in ("farthest", "faiss"):
        raise ValueError(f"empty_rule must be 'farthest' or 'faiss', not {empty_rule!r}")
    xs, cen = x.to(dtype), c.to(dtype)
    n, k = x.shape[0], c.shape[0]
    xx = (xs * xs).sum(1, keepdim=True)
    objs = []
    for it in range(niter + 1):
        # the argmin of the expanded form (in float64 its rounding is ~1e-16 of the norms, far
        # below float32's near-ties), then the chosen distances from differences
        labels = (xx - 2.0 * xs @ cen.T + (cen * cen).sum(1)).argmin(1)
        d2 = row_dist64(x, cen, labels)
        objs.append(float(d2.sum()))
        if it == niter:
            break
        sums = torch.zeros_like(cen).index_add_(0, labels, xs)
        counts = torch.bincount(labels, minlength=k)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty and empty_rule == "faiss":
            cen = faiss_split(sums / counts.clamp(min=1)[:, None], counts, n)
            continue
        if empty:
            for j, row in zip(empty, torch.topk(d2, len(empty)).indices.tolist()):
                old = int(labels[row])
                sums[old] -= xs[row]
                counts[old] -= 1
                sums[j], counts[j] = xs[row], 1
        cen = torch.where((counts > 0)[:, None], sums / counts.clamp(min=1)[:, None], cen)
    return cen, objs


def faiss_split(centers: torch.Tensor, counts: torch.Tensor, n: int) -> torch.Tensor:
    """faiss's ``split_clusters`` (faiss/Clustering.cpp, 1.15) transcribed: for each empty
    cluster ci in order, a donor cj is drawn with probability (size - 1) / (n - K), walking
    the clusters cyclically from 0 with one draw of ``RandomGenerator(1234).rand_float()``
    per step (a fresh generator per call; after 10 K draws, the largest cluster); ci takes
    cj's center, the two moved apart by a factor 1 +- 1/1024 alternating over the features,
    and cj's size is shared between them. faiss's generator is MT19937 seeded 1234 with
    rand_float = next 32 bits / (2^32 - 1) in float32, which numpy's legacy RandomState(1234)
    reproduces draw for draw (checked against faiss.RandomGenerator in tests/test_bench_sweep.py).
    """
    import numpy as np

    k = centers.shape[0]
    cen = centers.clone()
    size = counts.to(torch.float32).tolist()  # faiss keeps the sizes in float ("hassign")
    rng = np.random.RandomState(1234)
    draws: list[float] = []
    eps = 1.0 / 1024
    plus = torch.tensor([1 + eps if j % 2 == 0 else 1 - eps for j in range(cen.shape[1])], dtype=cen.dtype,
                        device=cen.device)  # fmt: skip
    minus = 2.0 - plus
    for ci in range(k):
        if size[ci] != 0:
            continue
        cj, found = 0, False
        for tries in range(10 * k):
            if not draws:  # the next 32-bit outputs, as faiss's float(mt()) / float(mt.max())
                raw = rng.randint(0, 2**32, size=4096, dtype=np.uint64).astype(np.float32)
                draws = (raw / np.float32(4294967295.0)).tolist()[::-1]
            cj = tries % k
            if draws.pop() < (size[cj] - 1.0) / float(np.float32(n - k)):
                found = True
                break
        if not found:
            cj = max(range(k), key=lambda j: (size[j], -j))
        cen[ci] = cen[cj] * plus
        cen[cj] = cen[cj] * minus
        size[ci] = float(np.float32(size[cj]) / np.float32(2))
        size[cj] = float(np.float32(size[cj]) - np.float32(size[ci]))
    return cen


def lloyd_errors(x: torch.Tensor, centers: torch.Tensor, truth: tuple[torch.Tensor, list[float]]) -> tuple[float, int]:
    """(relative inertia error, number of centers farther than 1e-3 of a row's rms distance)
    of final ``centers`` against the float64 Lloyd ``truth`` (``lloyd``)."""
    centers64, objs = truth
    g = torch.as_tensor(centers).detach().to("cpu", torch.float64)
    if tuple(g.shape) != tuple(centers64.shape) or not torch.isfinite(g).all():
        return math.inf, int(centers64.shape[0])
    g = g.to(x.device)
    # the expanded form's argmin: its rounding (~1e-16 of the norms) moves the inertia far
    # less than any tolerance here, at a GEMM's cost (reference.assign's differences cost
    # seconds per call at N*K*d ~ 1e8)
    inertia = float(row_dist64(x, g, argmin64(x, g)).sum())
    g = g.cpu()
    rms = math.sqrt(objs[-1] / max(1, x.shape[0]))  # a row's typical distance to its center
    off = int(((g - centers64.cpu()).norm(dim=1) > 1e-3 * rms).sum())
    return abs(inertia / objs[-1] - 1) if objs[-1] else abs(inertia), off


_last_plain: list = [None, None, None]  # (plain, truth, their errors): one check per provider of a cell


def _plain_errors(x, plain, truth) -> tuple[float, int]:
    """lloyd_errors of plain torch's centers, computed once for all providers of a cell."""
    if _last_plain[0] is not plain or _last_plain[1] is not truth:
        _last_plain[:] = [plain, truth, lloyd_errors(x, plain, truth)]
    return _last_plain[2]


def check_lloyd(x, centers, truth, plain=None, inertia_floor: float = 1e-4) -> tuple[bool, str]:
    """Final Lloyd centers from the same start and iterations against the float64 Lloyd
    ``truth``, within twice plain float32 torch's own errors (``plain``: its final centers):

    * the inertia, relatively, within max(``inertia_floor``, twice plain torch's);
    * the centers themselves (the inertia is flat at Lloyd's fixed point: centers 1% off move
      it by ~0.06%): as many may be off (farther than 1e-3 of a row's rms distance) as twice
      plain torch's count, never fewer than 1% of K. Lloyd is chaotic where many rows sit near
      a boundary: one float32 near-tie flipped early changes later iterations, and plain torch
      then ends with most centers off the float64 run's while its inertia agrees to ~1e-7.
    ``plain`` None: ``centers`` is plain torch itself, the yardstick: its inertia is held to
    the floor, its count of centers off is what the others are allowed twice of.
    """
    k = int(truth[0].shape[0])
    err, off = lloyd_errors(x, centers, truth)
    if plain is None:
        ok = err <= inertia_floor
        return ok, (f"inertia {err:.1e} from the float64 Lloyd's (allowed {inertia_floor:.0e}); {off} of {k} "
                    "centers off it by more than 1e-3 of a row's rms distance (plain float32 torch: the yardstick)")
    p_err, p_off = _plain_errors(x, plain, truth)
    tol, allowed = max(inertia_floor, 2 * p_err), max(k // 100, 2 * p_off)
    ok = err <= tol and off <= allowed
    return ok, (f"inertia {err:.1e} from the float64 Lloyd's (allowed {tol:.1e}); {off} of {k} centers off it "
                f"by more than 1e-3 of a row's rms distance (allowed {allowed}; plain float32 torch: "
                f"{p_err:.1e} and {p_off})")


def check_faiss_lloyd(x, c0, niter: int, centers, nsplit: int, truth, plain) -> tuple[bool, str]:
    """faiss's Lloyd (``faiss.Kmeans`` from the centers c0, ``niter`` iterations, every row)
    like for like: where it split no cluster (``nsplit`` from its iteration_stats), by
    ``check_lloyd`` against the common ``truth`` and ``plain``; where it did, against a
    float64 Lloyd with faiss's own split rule and plain float32 torch's run of the same
    (``faiss_split``), since scikit-learn and kmgan_ext move the farthest row instead."""
    if nsplit == 0:
        ok, msg = check_lloyd(x, centers, truth, plain)
        return ok, f"{msg}; faiss split no cluster"
    truth_f = lloyd(x, c0, niter, empty_rule="faiss")
    plain_f = lloyd(x, c0, niter, torch.float32, empty_rule="faiss")[0]
    ok, msg = check_lloyd(x, centers, truth_f, plain_f)
    return ok, f"{msg}; {nsplit} splits in {niter} iterations, judged by faiss's split rule"
