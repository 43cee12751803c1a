"""km.assign against the reference, on every backend available here."""
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import (
    DTYPES,
    assert_labels_match,
    backend_params,
    cuda_kernel_params,
    distances64,
    fast_backend_params,
    noncontiguous,
)

# Every N, d and K of the list appears; full products would not fit CI's time.
SHAPES = [
    (0, 3, 10),
    (1, 1, 1),
    (7, 3, 10),
    (7, 512, 1),
    (1023, 100, 10),
    (1023, 129, 1000),
    (4097, 100, 10),
    (4097, 1, 1000),
]


def test_known_answer():
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0], [9.0, 1.0]])
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    labels, dist2 = reference.assign(x, c)
    # x_2 is equidistant: the tie goes to the lowest index, as torch.argmin.
    assert labels.tolist() == [0, 1, 0, 1]
    assert dist2.tolist() == [0.0, 0.0, 25.0, 2.0]


@pytest.mark.parametrize("device,backend", backend_params())
def test_known_answer_every_backend(device, backend):
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0], [9.0, 1.0]], device=device)
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0]], device=device)
    labels, dist2 = km.assign(x, c, backend=backend)
    assert labels.tolist() == [0, 1, 0, 1]
    assert dist2.tolist() == [0.0, 0.0, 25.0, 2.0]


@pytest.mark.parametrize("n,d,k", SHAPES)
@pytest.mark.parametrize("device,backend", backend_params())
def test_random_float32(device, backend, n, d, k):
    g = torch.Generator().manual_seed(n * 7 + d * 3 + k)
    x = torch.randn(n, d, generator=g).to(device)
    c = torch.randn(k, d, generator=g).to(device)
    labels, dist2 = km.assign(x, c, backend=backend)
    assert_labels_match(x, c, labels, dist2)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("device,backend", backend_params())
def test_dtypes(device, backend, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(513, 37, generator=g).to(device, dtype)
    c = torch.randn(19, 37, generator=g).to(device, dtype)
    labels, dist2 = km.assign(x, c, backend=backend)
    assert_labels_match(x, c, labels, dist2)


@pytest.mark.parametrize("device,backend", backend_params())
def test_noncontiguous(device, backend):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 20, generator=g).to(device)
    c = torch.randn(12, 20, generator=g).to(device)
    want = km.assign(x, c, backend=backend)
    got = km.assign(noncontiguous(x), noncontiguous(c), backend=backend)
    assert torch.equal(want[0], got[0])
    torch.testing.assert_close(want[1], got[1])


# Two copies: the two-candidate re-check decides the tie; three: the many-candidate path.
@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("device,backend", backend_params())
def test_exact_ties_go_to_lowest_index(device, backend, copies):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(10, 33, generator=g)
    c = torch.cat([base] * copies).to(device)  # every center `copies` times
    x = torch.cat([torch.randn(200, 33, generator=g), base]).to(device)
    labels, dist2 = km.assign(x, c, backend=backend)
    ref_labels, _ = reference.assign(x.cpu(), c.cpu())
    assert torch.equal(labels.cpu(), ref_labels)
    assert int(labels.max()) < 10
    assert dist2[200:].abs().max().item() == 0.0  # rows equal to a center: distance 0


def _grid_near_ties(dtype, offset, unit, spread, d, k=16, n=256, seed=4):
    """Rows just off the bisector of their two nearest centers: near ties that are near, exactly.

    Centers are offset + unit * randint(-spread, spread) in columns 1..d-1 (far apart), and
    2**-6 (q - k/2) in column 0 for center q. A row is the midpoint of two centers i, j moved
    by +-2**-11 along column 0, so their squared distances differ by 2**-16 |i - j|, about
    1e-10 of the distance: far below d * 2**-24, what a float32 distance or dot product of
    these rows can resolve. Every value lies on the dtype's grid (checked), so the float64
    reference distances are exact.
    """
    g = torch.Generator().manual_seed(seed)
    c = offset + unit * torch.randint(-spread, spread + 1, (k, d), generator=g, dtype=torch.float64)
    c[:, 0] = 2.0**-6 * (torch.arange(k, dtype=torch.float64) - k // 2)
    i = torch.randint(0, k, (n,), generator=g)
    j = (i + 1 + torch.randint(0, k - 1, (n,), generator=g)) % k
    x = 0.5 * (c[i] + c[j])
    x[:, 0] += 2.0**-11 * (torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1)
    xs, cs = x.to(dtype), c.to(dtype)
    assert torch.equal(xs.double(), x) and torch.equal(cs.double(), c), "values off the dtype's grid"
    two = distances64(xs, cs).topk(2, dim=1, largest=False).values
    gap = (two[:, 1] - two[:, 0]) / two[:, 0]
    near = (gap > 0) & (gap < d * 2.0**-24)
    assert near.float().mean() > 0.8, f"only {int(near.sum())} of {n} rows are near ties"
    return xs, cs


def _assert_exact_labels(x, c, backend):
    labels, dist2 = km.assign(x, c, backend=backend)
    ref_labels, ref_dist2 = reference.assign(x.cpu(), c.cpu())
    wrong = labels.cpu() != ref_labels
    assert not wrong.any(), f"{int(wrong.sum())} of {len(wrong)} near-tie rows differ from the float64 argmin"
    torch.testing.assert_close(dist2.cpu(), ref_dist2, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device,backend", backend_params())
def test_near_ties_large_magnitude(device, backend):
    """Rows near 1e4 whose two nearest centers differ by ~1e-10 relative (< 2**-24).

    ||x||^2 - 2 x.c + ||c||^2 in float32, even of shifted or centred rows, errs by far more than
    the gap: a kernel that ranks by it without an exact re-check gets about half of them wrong.
    """
    x, c = _grid_near_ties(torch.float32, offset=1e4, unit=1.0, spread=64, d=64)
    _assert_exact_labels(x.to(device), c.to(device), backend)


@pytest.mark.parametrize("k,d", [(2, 64), (5, 37), (10, 100), (12, 41)])
@pytest.mark.parametrize("device,backend", backend_params())
def test_near_ties_few_centers(device, backend, k, d):
    """The float32 path for K <= 12 (CPU: one sweep over x, assign_small_k.cpp) re-checks near
    ties exactly too; d not a multiple of 8 exercises its masked last columns."""
    x, c = _grid_near_ties(torch.float32, offset=1e4, unit=1.0, spread=64, d=d, k=k)
    _assert_exact_labels(x.to(device), c.to(device), backend)


@pytest.mark.parametrize(
    "dtype,offset,spread,d",
    [(torch.float16, 1024.0, 128, 96), (torch.bfloat16, 192.0, 31, 96)],
    ids=["float16", "bfloat16"],
)
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_low_precision_near_ties(device, backend, dtype, offset, spread, d):
    """16-bit rows one grid step off the bisector of two centers (the second center is as near
    as the first up to < d * 2**-24 relative): labels are the float64 argmin exactly."""
    x, c = _grid_near_ties(dtype, offset=offset, unit=2.0, spread=spread, d=d)
    _assert_exact_labels(x.to(device), c.to(device), backend)


@pytest.mark.parametrize("device,backend", backend_params())
def test_gradient_matches_formula(device, backend):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 9, generator=g).to(device).requires_grad_()
    c = torch.randn(6, 9, generator=g).to(device).requires_grad_()
    w = torch.randn(50, generator=g).to(device)
    labels, dist2 = km.assign(x, c, backend=backend)
    (dist2 * w).sum().backward()
    x64, c64 = x.detach().double().requires_grad_(), c.detach().double().requires_grad_()
    ((x64 - c64[labels]) ** 2).sum(1).mul(w.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c.grad.double(), c64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", backend_params())
def test_gradcheck_float64(device, backend):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(13, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    c = torch.randn(4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, c: km.assign(x, c, backend=backend)[1], (x, c))


@pytest.mark.parametrize("device,backend", backend_params())
def test_opcheck(device, backend):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(33, 7, generator=g).to(device)
    c = torch.randn(5, 7, generator=g).to(device)
    torch.library.opcheck(torch.ops.kmgan_ext.assign.default, (x, c, backend))
    # With inputs that require grad, opcheck's aot test adds every output into one sum and
    # fails on the int64 labels output (its own limitation); its other checks still run.
    xg, cg = x.double().requires_grad_(), c.double().requires_grad_()
    torch.library.opcheck(
        torch.ops.kmgan_ext.assign.default,
        (xg, cg, backend),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    gd = torch.randn(33, dtype=torch.float64, device=device)
    labels = reference.assign(x, c)[0]
    torch.library.opcheck(
        torch.ops.kmgan_ext.assign_backward.default, (gd, xg.detach(), cg.detach(), labels, True, backend)
    )


# ------------------------------------------------------------------ the label contract, exactly
# Labels are the float64 argmin of the inputs' values (ties to the lowest k, NaN propagates,
# exact where float32 squares overflow): docs/ops.md, contracts 1 and 2. Held here for the
# CUDA kernels (the CPU harness, and CUDA on a GPU); the label tolerance of
# assert_labels_match would hide a float32 argmin.
def _near_tie_rows(n=600, d=64, k=24, gap=2e-8, seed=11):
    """Rows a relative `gap` from the midpoint of two centers: closer than float32 rounding."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(k, d, generator=g)
    i = torch.randint(0, k, (n,), generator=g)
    j = (i + 1 + torch.randint(0, k - 1, (n,), generator=g)) % k
    t = 0.5 + gap * torch.sign(torch.randn(n, 1, generator=g))
    return c[i] + t * (c[j] - c[i]), c


@pytest.mark.parametrize("device,backend", cuda_kernel_params())
def test_near_tie_labels_are_the_float64_argmin(device, backend):
    x, c = _near_tie_rows()
    ref_labels, ref_dist2 = reference.assign(x, c)
    labels, dist2 = km.assign(x.to(device), c.to(device), backend=backend)
    assert torch.equal(labels.cpu(), ref_labels), f"{int((labels.cpu() != ref_labels).sum())} rows"
    torch.testing.assert_close(dist2.cpu(), ref_dist2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device,backend", cuda_kernel_params())
def test_nan_and_inf_follow_the_reference(device, backend):
    """NaN propagates: the lowest k whose distance is NaN, dist2 NaN; inf - inf is NaN."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(70, 5, generator=g)
    c = torch.randn(9, 5, generator=g)
    x[3, 2] = float("nan")  # every distance of row 3 is NaN: label 0
    x[5, 0] = float("inf")  # inf distances only
    c[4, 1] = float("nan")  # every row has a NaN distance at k = 4 (and k = 6 below)
    c[6, 0] = float("inf")  # row 5: inf - inf = NaN at k = 6; inf elsewhere
    c2 = c.clone()
    c2[4, 1] = 0.0  # second case: only center 6 is special
    for cc in (c, c2):
        ref_labels, ref_dist2 = reference.assign(x, cc)
        labels, dist2 = km.assign(x.to(device), cc.to(device), backend=backend)
        assert torch.equal(labels.cpu(), ref_labels)
        torch.testing.assert_close(dist2.cpu(), ref_dist2, equal_nan=True)


@pytest.mark.parametrize("device,backend", cuda_kernel_params())
def test_overflowing_squares_keep_exact_labels(device, backend):
    """Squared distances past float32's range: the float64 argmin, dist2 rounded (inf)."""
    x = torch.tensor([[3e19, 3e19], [3e19, 3e19], [1.0, 2.0]])
    c = torch.tensor([[-3e19, -3e19], [3e19, 3e19], [0.0, 0.0]])
    ref_labels, ref_dist2 = reference.assign(x, c)
    assert ref_labels.tolist() == [1, 1, 2]
    labels, dist2 = km.assign(x.to(device), c.to(device), backend=backend)
    assert labels.tolist() == ref_labels.tolist()
    torch.testing.assert_close(dist2.cpu(), ref_dist2)
    far = torch.tensor([[3e19, 3e19]])  # both distances exceed float32: label 1, dist2 inf
    c_far = torch.tensor([[-3e19, -3e19], [-1e19, -1e19]])
    labels, dist2 = km.assign(far.to(device), c_far.to(device), backend=backend)
    assert labels.tolist() == [1] and dist2.tolist() == [float("inf")]


NAN, INF = float("nan"), float("inf")
# (x, centers): the overflow reproducer, overflowing rows where a finite candidate
# wins the float32 expansion, NaN/Inf in x or in a center (contract 1: torch.argmin's rule).
EDGE_CASES = [
    ([[3e19, 3e19]], [[3e19, 3e19], [0.0, 0.0]]),
    ([[3e19, 0.0]], [[-2e19, 0.0], [2e19, 0.0], [3e19, 0.0]]),
    ([[3e38, 0.0], [1.0, 1.0]], [[-3e38, 0.0], [0.0, 0.0]]),
    ([[1e30, 0.0]], [[0.0, 0.0], [2e30, 0.0]]),
    ([[1.0, 2.0], [5.0, 5.0]], [[0.0, 0.0], [NAN, 0.0], [1.0, 2.0]]),
    ([[NAN, 1.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]),
    ([[INF, 0.0], [2.0, 0.0]], [[0.0, 0.0], [INF, 0.0], [1.0, 0.0]]),
    ([[0.0, 0.0]], [[INF, 0.0], [-INF, 0.0]]),
    ([[1e-45, 0.0], [1e-40, 1e-39]], [[0.0, 0.0], [1e-45, 1e-45]]),
]


def test_reference_nan_rule():
    """Contract 1 on a known answer: the lowest NaN distance wins and propagates."""
    x = torch.tensor([[1.0, 2.0]])
    labels, dist2 = reference.assign(x, torch.tensor([[0.0, 0.0], [NAN, 0.0], [1.0, 2.0], [NAN, 1.0]]))
    assert labels.tolist() == [1] and dist2.isnan().all()
    labels, dist2 = reference.assign(torch.tensor([[3e19, 3e19]]), torch.tensor([[3e19, 3e19], [0.0, 0.0]]))
    assert labels.tolist() == [0] and dist2.tolist() == [0.0]
    labels, dist2 = reference.assign(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0], [3e19, 3e19]]))
    assert labels.tolist() == [0] and dist2.tolist() == [1.0]
    _, dist2 = reference.assign(torch.tensor([[3e19, 3e19]]), torch.tensor([[0.0, 0.0]]))
    assert dist2.tolist() == [INF]  # the float64 minimum past float32: inf (contract 2)


@pytest.mark.parametrize("case", range(len(EDGE_CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_overflow_and_nonfinite_match_reference_exactly(device, backend, dtype, case):
    x, c = (torch.tensor(t).to(dtype) for t in EDGE_CASES[case])
    want_l, want_d = reference.assign(x, c)
    labels, dist2 = km.assign(x.to(device), c.to(device), backend=backend)
    assert labels.cpu().tolist() == want_l.tolist()
    assert torch.equal(dist2.cpu().isnan(), want_d.isnan())
    ok = ~want_d.isnan()
    assert torch.equal(dist2.cpu()[ok], want_d[ok])


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_every_assigning_op_keeps_overflowing_labels_exact(device, backend):
    """minibatch_step_ and the KM-GAN loss block assign too (issue 16 item 2)."""
    x = torch.tensor([[3e19, 3e19], [0.0, 1.0]], device=device)
    c = torch.tensor([[3e19, 3e19], [0.0, 0.0]], device=device)
    labels = km.minibatch_step_(c.clone(), torch.zeros(2, dtype=torch.int64, device=device), x, backend=backend)
    assert labels.tolist() == [0, 1]
    t = km.kmgan_losses(x, x, c, c, backend=backend)
    assert t.labels_real.tolist() == [0, 1] and t.labels_fake_hat.tolist() == [0, 1]
