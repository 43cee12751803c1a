"""km.assign(x, centers, k=k): the k nearest centers, on every backend, against the reference."""
import importlib

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _cuda_emulated, _dispatch, reference
from testing import DTYPES, backend_params, distances64, noncontiguous


def _check_exact(x, c, k, labels, dist2):
    """labels equal the float64 reference's exactly; dist2 is their distance, rounded."""
    want_l, want_d = reference.assign_topk(x.cpu(), c.cpu(), k)
    assert labels.dtype == torch.int64 and labels.shape == (x.shape[0], k)
    assert dist2.dtype == want_d.dtype and dist2.shape == (x.shape[0], k)
    assert torch.equal(labels.cpu(), want_l), (labels.cpu() != want_l).nonzero()[:5]
    rtol = 1e-13 if x.dtype == torch.float64 else 2e-7
    torch.testing.assert_close(dist2.cpu().double(), want_d.double(), rtol=rtol, atol=0, equal_nan=True)


def test_reference_known_answer():
    x = torch.tensor([[0.0, 0.0], [5.0, 0.0], [9.0, 1.0]])
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 1.0], [10.0, 0.0]])
    labels, dist2 = reference.assign_topk(x, c, 3)
    # row 1: centers 0 and 1 tie at 25 (lowest index first); centers 1 and 3 are copies.
    assert labels.tolist() == [[0, 2, 1], [2, 0, 1], [1, 3, 2]]
    assert dist2.tolist() == [[0.0, 26.0, 100.0], [1.0, 25.0, 25.0], [2.0, 2.0, 16.0]]


@pytest.mark.parametrize("device,backend", backend_params())
def test_known_answer_every_backend(device, backend):
    x = torch.tensor([[0.0, 0.0], [5.0, 0.0], [9.0, 1.0]], device=device)
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 1.0], [10.0, 0.0]], device=device)
    labels, dist2 = km.assign(x, c, k=3, backend=backend)
    assert labels.tolist() == [[0, 2, 1], [2, 0, 1], [1, 3, 2]]
    assert dist2.tolist() == [[0.0, 26.0, 100.0], [1.0, 25.0, 25.0], [2.0, 2.0, 16.0]]


# (n, d, K, k): k = 1, k = K (the list holds every center), several center tiles and blocks,
# odd sizes, d = 1, N = 0.
SHAPES = [(0, 3, 5, 2), (1, 1, 1, 1), (7, 3, 10, 10), (200, 37, 70, 5), (129, 1, 300, 4), (65, 40, 300, 1)]


@pytest.mark.parametrize("n,d,kc,k", SHAPES)
@pytest.mark.parametrize("device,backend", backend_params())
def test_random_matches_reference(device, backend, n, d, kc, k):
    g = torch.Generator().manual_seed(n + 3 * d + 7 * kc + k)
    x = torch.randn(n, d, generator=g).to(device)
    c = torch.randn(kc, d, generator=g).to(device)
    labels, dist2 = km.assign(x, c, k=k, backend=backend)
    _check_exact(x, c, k, labels, dist2)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("device,backend", backend_params())
def test_dtypes(device, backend, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(150, 19, generator=g).to(device, dtype)
    c = torch.randn(33, 19, generator=g).to(device, dtype)
    labels, dist2 = km.assign(x, c, k=4, backend=backend)
    _check_exact(x, c, 4, labels, dist2)


@pytest.mark.parametrize("device,backend", backend_params())
def test_first_column_is_assign(device, backend):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(120, 9, generator=g).to(device)
    c = torch.randn(20, 9, generator=g).to(device)
    c[7] = c[3]  # a tie for some rows' nearest
    x[:5] = c[3]
    labels, dist2 = km.assign(x, c, k=3, backend=backend)
    l1, d1 = km.assign(x, c, backend=backend)
    assert torch.equal(labels[:, 0], l1)
    torch.testing.assert_close(dist2[:, 0], d1)
    assert labels[:5, :2].tolist() == [[3, 7]] * 5  # copies: ascending index


# More exact ties at the k-th place than the running list has slack (8): every backend must
# take its exact path and still give the lowest indices.
@pytest.mark.parametrize("copies", [2, 12])
@pytest.mark.parametrize("device,backend", backend_params())
def test_exact_ties_go_to_lowest_index(device, backend, copies):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 11, generator=g)
    c = torch.cat([base] * copies).to(device)  # center q is base[q % 6]
    x = torch.cat([torch.randn(60, 11, generator=g), base]).to(device)
    labels, dist2 = km.assign(x, c, k=3, backend=backend)
    _check_exact(x, c, 3, labels, dist2)
    assert labels[60:, 0].tolist() == list(range(6))
    assert dist2[60:, 0].abs().max().item() == 0.0


@pytest.mark.parametrize("tied", [6, 24])
@pytest.mark.parametrize("device,backend", backend_params())
def test_near_ties_are_the_float64_order(device, backend, tied):
    """`tied` centers 2^-20 apart in one coordinate, the nearest of every row, plus 18 far
    ones: their distances differ far below what float32 resolves (rel ~1e-8), so the float32
    order is noise and only the float64 re-check gives the reference's order. 6 tied centers
    fit the running list's slack (the candidates' re-check decides), 24 do not (exact path)."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(1, 16, generator=g, dtype=torch.float64) * 4
    c = base.repeat(tied, 1)
    c[:, 0] += torch.randperm(tied, generator=g).double() * 2.0**-20
    c = torch.cat([c, base + 10 * torch.randn(18, 16, generator=g, dtype=torch.float64)])
    x = base + torch.randn(90, 16, generator=g, dtype=torch.float64)
    x, c = x.float(), c.float()
    srt = distances64(x, c).sort(dim=1).values
    assert float(((srt[:, 1:4] - srt[:, :3]) / srt[:, :3]).max()) < 1e-6, "the centers are not near-tied"
    labels, dist2 = km.assign(x.to(device), c.to(device), k=3, backend=backend)
    _check_exact(x, c, 3, labels, dist2)


@pytest.mark.parametrize("device,backend", backend_params())
def test_nan_first_and_overflow_exact(device, backend):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 6, generator=g)
    c = torch.randn(9, 6, generator=g)
    x[3, 2] = float("nan")  # every distance of row 3 NaN: labels 0, 1, 2
    c[5, 1] = float("nan")  # every row's distance to center 5 NaN: center 5 first
    labels, dist2 = km.assign(x.to(device), c.to(device), k=3, backend=backend)
    _check_exact(x, c, 3, labels, dist2)
    assert labels[3].tolist() == [0, 1, 2] and labels[0, 0].item() == 5
    # float32 squares overflow past ~1.8e19: labels stay the float64 order
    big = torch.randn(30, 4, generator=g) * 3e19
    cb = torch.randn(7, 4, generator=g) * 3e19
    labels, dist2 = km.assign(big.to(device), cb.to(device), k=3, backend=backend)
    _check_exact(big, cb, 3, labels, dist2)


@pytest.mark.parametrize("device,backend", backend_params())
def test_noncontiguous(device, backend):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 10, generator=g).to(device)
    c = torch.randn(12, 10, generator=g).to(device)
    want = km.assign(x, c, k=3, backend=backend)
    got = km.assign(noncontiguous(x), noncontiguous(c), k=3, backend=backend)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


@pytest.mark.parametrize("device,backend", backend_params())
def test_gradient_matches_reference(device, backend):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 6, generator=g).to(device).requires_grad_()
    c = torch.randn(9, 6, generator=g).to(device).requires_grad_()
    w = torch.randn(40, 3, generator=g).to(device)
    _, dist2 = km.assign(x, c, k=3, backend=backend)
    gx, gc = torch.autograd.grad((dist2 * w).sum(), (x, c))
    xr, cr = x.detach().double().cpu().requires_grad_(), c.detach().double().cpu().requires_grad_()
    labels, _ = reference.assign_topk(xr.detach(), cr.detach(), 3)
    want = ((xr[:, None, :] - cr[labels]) ** 2).sum(-1)  # autograd through the formula
    wx, wc = torch.autograd.grad((want * w.double().cpu()).sum(), (xr, cr))
    torch.testing.assert_close(gx.double().cpu(), wx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gc.double().cpu(), wc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(15, 5, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, c: km.assign(x, c, k=3, backend=backend)[1], (x, c))


def test_opcheck():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(33, 7, generator=g)
    c = torch.randn(5, 7, generator=g)
    torch.library.opcheck(torch.ops.kmgan_ext.assign_topk.default, (x, c, 2, "cpu"))
    xg, cg = x.double().requires_grad_(), c.double().requires_grad_()
    torch.library.opcheck(torch.ops.kmgan_ext.assign_topk.default, (xg, cg, 2, "cpu"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_compile_fullgraph():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(20, 4, generator=g)
    c = torch.randn(6, 4, generator=g)
    f = torch.compile(lambda x, c: km.assign(x, c, k=2, backend="cpu"), fullgraph=True, backend="eager")
    got, want = f(x, c), km.assign(x, c, k=2, backend="cpu")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("k,err,match", [
    (6, ValueError, r"k must lie in \[1, K\] = \[1, 5\].*got k = 6"),
    (0, ValueError, r"k must lie in \[1, K\]"),
    (-1, ValueError, r"k must lie in"),
    (True, TypeError, r"k must be an int or None, got bool"),
    (2.0, TypeError, r"k must be an int or None, got float"),
])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_k_is_named(backend, k, err, match):
    x, c = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(err, match=match):
        km.assign(x, c, k=k, backend=backend)


def test_native_op_checks_k():
    x, c = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="k must lie in"):
        torch.ops.kmgan_ext.assign_topk_native(x, c, 6)


# ------------------------------------------------------------------ metric="cosine"
# The k largest cosines, ordered by the reference's float64 key (ties to the lowest index, NaN
# first), dist2 = 2 - 2 cos: column 0 is assign(..., metric="cosine").
def _check_cosine(x, c, k, labels, dist2):
    want_l, want_d = reference.assign_topk(x.cpu(), c.cpu(), k, True)
    assert labels.dtype == torch.int64 and labels.shape == (x.shape[0], k)
    assert dist2.dtype == want_d.dtype and dist2.shape == (x.shape[0], k)
    assert torch.equal(labels.cpu(), want_l), (labels.cpu() != want_l).nonzero()[:5]
    # the kernels' cos divides by ||x|| ||c||, the reference by sqrt(||x||^2 ||c||^2): ulps
    tol = 1e-12 if x.dtype == torch.float64 else 1e-6
    torch.testing.assert_close(dist2.cpu().double(), want_d.double(), rtol=tol, atol=tol, equal_nan=True)


def test_cosine_reference_known_answer():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
    c = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [4.0, 0.0]])
    labels, dist2 = reference.assign_topk(x, c, 3, True)
    # row 0: centers 0 and 3 are the same direction (lowest index first); row 1 is zero:
    # every cosine 0, index order, dist2 2.
    assert labels.tolist() == [[0, 3, 2], [0, 1, 2], [1, 2, 0]]
    h = 2 - 2 ** 0.5
    torch.testing.assert_close(dist2, torch.tensor([[0.0, 0.0, h], [2.0, 2.0, 2.0], [h, 2.0, 2 + 2 ** 0.5]]))


@pytest.mark.parametrize("n,d,kc,k", SHAPES)
@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_random_matches_reference(device, backend, n, d, kc, k):
    g = torch.Generator().manual_seed(n + 3 * d + 7 * kc + k)
    x = (torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 10).to(device)
    c = torch.randn(kc, d, generator=g).to(device)
    labels, dist2 = km.assign(x, c, k=k, metric="cosine", backend=backend)
    _check_cosine(x, c, k, labels, dist2)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_dtypes(device, backend, dtype):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(150, 19, generator=g).to(device, dtype)
    c = torch.randn(33, 19, generator=g).to(device, dtype)
    labels, dist2 = km.assign(x, c, k=4, metric="cosine", backend=backend)
    _check_cosine(x, c, 4, labels, dist2)


@pytest.mark.parametrize("copies", [2, 12])
@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_first_column_and_exact_ties(device, backend, copies):
    """Centers q and q + 6j are scaled copies (factors 2^j: the same float64 key, bitwise):
    ties to the lowest index, with more tied centers than the running lists' slack (8) when
    copies = 12. Column 0 is assign's answer; a zero row gets 0, 1, 2 and dist2 2."""
    g = torch.Generator().manual_seed(12)
    base = torch.randn(6, 11, generator=g)
    c = torch.cat([base * 2.0**j for j in range(copies)]).to(device)
    x = torch.cat([torch.randn(60, 11, generator=g), base * 3, torch.zeros(1, 11)]).to(device)
    labels, dist2 = km.assign(x, c, k=3, metric="cosine", backend=backend)
    _check_cosine(x, c, 3, labels, dist2)
    l1, d1 = km.assign(x, c, metric="cosine", backend=backend)
    assert torch.equal(labels[:, 0], l1)
    torch.testing.assert_close(dist2[:, 0], d1)
    assert labels[60:66, :2].tolist() == [[q, q + 6] for q in range(6)]
    assert labels[66].tolist() == [0, 1, 2] and dist2[66].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("tied", [6, 24])
@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_near_ties_are_the_float64_order(device, backend, tied):
    """`tied` center directions 2^-22 apart in one coordinate, the most similar of every row:
    their cosines differ below float32's resolution, so only the float64 re-keying gives the
    reference's order (6 fit the lists' slack, 24 do not)."""
    g = torch.Generator().manual_seed(13)
    base = torch.randn(1, 16, generator=g, dtype=torch.float64)
    c = base.repeat(tied, 1)
    c[:, 0] += torch.randperm(tied, generator=g).double() * 2.0**-22
    c = torch.cat([c, torch.randn(18, 16, generator=g, dtype=torch.float64)])
    x = base + 0.05 * torch.randn(90, 16, generator=g, dtype=torch.float64)
    x, c = x.float(), c.float()
    cos = reference.cosine_similarities(x, c).sort(dim=1, descending=True).values
    assert float((cos[:, :3] - cos[:, 1:4]).max()) < 1e-6, "the centers are not near-tied"
    labels, dist2 = km.assign(x.to(device), c.to(device), k=3, metric="cosine", backend=backend)
    _check_cosine(x, c, 3, labels, dist2)


@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_nan_first_and_huge_exact(device, backend):
    g = torch.Generator().manual_seed(14)
    x = torch.randn(20, 6, generator=g)
    c = torch.randn(9, 6, generator=g)
    x[3, 2] = float("nan")  # every key of row 3 NaN: labels 0, 1, 2
    c[5, 1] = float("nan")  # every row's key for center 5 NaN: center 5 first
    labels, dist2 = km.assign(x.to(device), c.to(device), k=3, metric="cosine", backend=backend)
    _check_cosine(x, c, 3, labels, dist2)
    assert labels[3].tolist() == [0, 1, 2] and labels[0, 0].item() == 5
    # ||x||^2 past float32 (and tiny rows): the exact keys decide
    big = torch.randn(30, 4, generator=g) * 3e19
    big[:10] *= 1e-40
    cb = torch.randn(7, 4, generator=g) * 3e19
    labels, dist2 = km.assign(big.to(device), cb.to(device), k=3, metric="cosine", backend=backend)
    _check_cosine(big, cb, 3, labels, dist2)


@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_gradient_matches_reference(device, backend):
    g = torch.Generator().manual_seed(15)
    x = torch.randn(40, 6, generator=g).to(device).requires_grad_()
    c = torch.randn(9, 6, generator=g).to(device).requires_grad_()
    w = torch.randn(40, 3, generator=g).to(device)
    _, dist2 = km.assign(x, c, k=3, metric="cosine", backend=backend)
    gx, gc = torch.autograd.grad((dist2 * w).sum(), (x, c))
    xr, cr = x.detach().double().cpu().requires_grad_(), c.detach().double().cpu().requires_grad_()
    labels, _ = reference.assign_topk(xr.detach(), cr.detach(), 3, True)
    cl = cr[labels]
    want = 2 - 2 * (xr[:, None, :] * cl).sum(-1) / (xr.norm(dim=1)[:, None] * cl.norm(dim=2))
    wx, wc = torch.autograd.grad((want * w.double().cpu()).sum(), (xr, cr))
    torch.testing.assert_close(gx.double().cpu(), wx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gc.double().cpu(), wc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_cosine_gradcheck_float64(backend):
    g = torch.Generator().manual_seed(16)
    x = torch.randn(15, 5, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, c: km.assign(x, c, k=3, metric="cosine", backend=backend)[1], (x, c))


def test_cosine_opcheck():
    g = torch.Generator().manual_seed(17)
    x, c = torch.randn(33, 7, generator=g), torch.randn(5, 7, generator=g)
    torch.library.opcheck(torch.ops.kmgan_ext.assign_topk.default, (x, c, 2, "cpu", True))
    xg, cg = x.double().requires_grad_(), c.double().requires_grad_()
    torch.library.opcheck(torch.ops.kmgan_ext.assign_topk.default, (xg, cg, 2, "cpu", True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_cosine_matches_faiss_inner_product_search():
    """The peer: faiss's exact inner-product search on normalised vectors (IndexFlatIP) ranks
    by cosine; on data without near ties it gives the same k centers in the same order."""
    faiss = pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(18)
    x = torch.randn(300, 12, generator=g) * 5
    c = torch.randn(40, 12, generator=g)
    xn = torch.nn.functional.normalize(x, dim=1).numpy()
    index = faiss.IndexFlatIP(12)
    index.add(torch.nn.functional.normalize(c, dim=1).numpy())
    sim, want = index.search(xn, 4)
    labels, dist2 = km.assign(x, c, k=4, metric="cosine", backend="cpu")
    assert torch.equal(labels, torch.from_numpy(want).long())
    torch.testing.assert_close(dist2, torch.from_numpy(2 - 2 * sim), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ batched independent problems
# x (B, N, d) with centers (B, K, d): (B, N, k) outputs, each problem bitwise its own 2-D call
# (held to the float64 reference above) and the reference's labels exactly, in one launch for
# all problems.
def _batched(b, n, kc, d, dtype=torch.float32, seed=0):
    """Problems with their own offsets and scales: a kernel reading another problem's rows or
    centers gives other labels."""
    g = torch.Generator().manual_seed(seed + 97 * b + 13 * n + 7 * kc + d)
    shift = torch.randn(b, 1, d, generator=g, dtype=torch.float64) * 5
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64) * torch.rand(b, n, 1, generator=g) * 3 + shift
    c = torch.randn(b, kc, d, generator=g, dtype=torch.float64) + shift
    return x.to(dtype), c.to(dtype)


def _check_problem(metric, x, c, k, labels, dist2):
    (_check_cosine if metric == "cosine" else _check_exact)(x, c, k, labels, dist2)


# (B, N, K, d, k): k = K (the list holds every center), k = 1, several center tiles and row
# blocks with more centers than the lists' length, empty problems.
BATCHED = [(3, 70, 5, 4, 2), (3, 33, 6, 3, 6), (2, 40, 9, 5, 1), (2, 70, 300, 8, 4),
           (4, 0, 3, 4, 2), (0, 5, 3, 4, 2)]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("shape", BATCHED, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_equals_per_problem(device, backend, shape, metric):
    b, n, kc, d, k = shape
    x, c = _batched(b, n, kc, d)
    if b >= 2 and n >= 8:
        x[0, 1] = c[0, 2] * (3 if metric == "cosine" else 1)  # center 2 exactly
        x[-1, 0, 1] = float("nan")  # every value of that row NaN: labels 0, 1, ...
        c[-1, kc - 1, 0] = float("nan")  # the last center first in every row of the last problem
        c[0, kc // 2] = c[0, 0]  # a copy: exact ties to the lower index
    labels, dist2 = km.assign(x.to(device), c.to(device), k=k, metric=metric, backend=backend)
    assert labels.shape == (b, n, k) and dist2.shape == (b, n, k)
    assert labels.dtype == torch.int64 and dist2.dtype == torch.float32
    for i in range(b):
        one_l, one_d = km.assign(x[i].to(device), c[i].to(device), k=k, metric=metric, backend=backend)
        assert torch.equal(labels[i], one_l), i
        torch.testing.assert_close(dist2[i], one_d, rtol=0, atol=0, equal_nan=True, msg=str(i))
        _check_problem(metric, x[i], c[i], k, labels[i], dist2[i])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_dtypes(device, backend, dtype, metric):
    x, c = _batched(3, 40, 11, 6, dtype)
    labels, dist2 = km.assign(x.to(device), c.to(device), k=3, metric=metric, backend=backend)
    assert dist2.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for i in range(3):
        _check_problem(metric, x[i], c[i], 3, labels[i], dist2[i])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_exact_paths(device, backend, metric):
    """More exact ties at the k-th place than the lists' slack (8) in one problem, near ties
    below float32's resolution in another, float32-overflowing values in a third: each takes
    its exact path in the same launch as the others and still gives the reference's order."""
    g = torch.Generator().manual_seed(21)
    base = torch.randn(6, 11, generator=g)
    ties = torch.cat([base * (2.0**j if metric == "cosine" else 1.0) for j in range(12)])  # 72
    near = base[:1].repeat(72, 1)
    near[:, 0] += torch.randperm(72, generator=g).float() * 2.0**-20
    huge = torch.randn(72, 11, generator=g) * 3e19
    c = torch.stack([ties, near, huge])
    x = torch.stack([torch.cat([torch.randn(34, 11, generator=g), base * 3]),
                     base[:1] + 0.05 * torch.randn(40, 11, generator=g),
                     torch.randn(40, 11, generator=g) * 3e19])
    labels, dist2 = km.assign(x.to(device), c.to(device), k=3, metric=metric, backend=backend)
    for i in range(3):
        _check_problem(metric, x[i], c[i], 3, labels[i], dist2[i])
    assert labels[0, 34:, 0].tolist() == list(range(6))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_k1_is_assign(device, backend, metric):
    x, c = (t.to(device) for t in _batched(3, 40, 7, 5))
    top, top_d = km.assign(x, c, k=1, metric=metric, backend=backend)
    labels, dist2 = km.assign(x, c, metric=metric, backend=backend)
    assert top.shape == (3, 40, 1)
    assert torch.equal(top[..., 0], labels)
    torch.testing.assert_close(top_d[..., 0], dist2)


class _CountingKernel:
    """A Triton kernel whose launches (grids) are recorded."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_one_launch(device, backend, metric, monkeypatch):
    x, c = (t.to(device) for t in _batched(6, 40, 7, 5))
    counter = None
    if backend == "triton":
        # kernels/__init__ re-exports the function under the module's name: fetch the module.
        mod = importlib.import_module("kmgan_ext.kernels.assign_topk")
        counter = _CountingKernel(mod._topk_kernel)
        monkeypatch.setattr(mod, "_topk_kernel", counter)
    launches = _cuda_emulated.launch_count if backend == "cuda_emulated" else (lambda: 0)
    before = launches()
    km.assign(x[0], c[0], k=3, metric=metric, backend=backend)
    one = launches() - before
    before = launches()
    with _dispatch.recording() as calls:
        km.assign(x, c, k=3, metric=metric, backend=backend)
    assert [f for f, _ in calls] == ["assign_topk"]  # one routed call, not one per problem
    assert launches() - before == one  # as many kernel launches as one problem's (2 with cosine)
    if counter is not None:
        assert [grid[1] for grid in counter.grids] == [1, 6]  # one problem, then all six at once


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_gradient(device, backend, metric):
    """Each problem's gradient is that of its own 2-D call, and the reference's."""
    x, c = _batched(3, 25, 6, 4)
    w = torch.randn(3, 25, 3, generator=torch.Generator().manual_seed(1))
    x, c, w = x.to(device).requires_grad_(), c.to(device).requires_grad_(), w.to(device)
    _, dist2 = km.assign(x, c, k=3, metric=metric, backend=backend)
    gx, gc = torch.autograd.grad((dist2 * w).sum(), (x, c))
    for i in range(3):
        xi, ci = x[i].detach().requires_grad_(), c[i].detach().requires_grad_()
        _, di = km.assign(xi, ci, k=3, metric=metric, backend=backend)
        gxi, gci = torch.autograd.grad((di * w[i]).sum(), (xi, ci))
        torch.testing.assert_close(gx[i], gxi, rtol=0, atol=0)
        torch.testing.assert_close(gc[i], gci, rtol=1e-6, atol=1e-6)  # GPU sums: atomics
    xr, cr = x.detach().cpu().requires_grad_(), c.detach().cpu().requires_grad_()
    _, dr = km.assign(xr, cr, k=3, metric=metric, backend="reference")
    wx, wc = torch.autograd.grad((dr * w.cpu()).sum(), (xr, cr))
    torch.testing.assert_close(gx.cpu(), wx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gc.cpu(), wc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 0, 3)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_gradient_of_empty_problems(device, backend, shape):
    """No problems, or problems without rows: zero gradients of the inputs' shapes (the flat
    (B*K, d) view of no problems holds no center, which no kernel accepts)."""
    b, n, kc = shape
    x = torch.randn(b, n, 5, device=device, requires_grad=True)
    c = torch.randn(b, kc, 5, device=device, requires_grad=True)
    for k in (None, 2):  # assign too: its batched backward takes the same flat view
        _, dist2 = km.assign(x, c, k=k, backend=backend)
        gx, gc = torch.autograd.grad(dist2.sum(), (x, c))
        assert gx.shape == x.shape and gc.shape == c.shape
        assert not gc.any()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_batched_gradcheck_float64(backend, metric):
    x, c = _batched(2, 5, 4, 3, torch.float64)
    x, c = x.requires_grad_(), c.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, c: km.assign(x, c, k=2, metric=metric, backend=backend)[1], (x, c))


def test_batched_opcheck():
    """The batched form goes through the same op: its fake kernel ((B, N, k)), autograd
    registration and schema (not the aot_dispatch tests: a torch.compile each, run above on
    the 2-D form)."""
    x, c = _batched(3, 9, 4, 5, torch.float64)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    for cosine in (False, True):
        torch.library.opcheck(torch.ops.kmgan_ext.assign_topk.default, (x, c, 2, "cpu", cosine), test_utils=utils)
        xg, cg = x.clone().requires_grad_(), c.clone().requires_grad_()
        torch.library.opcheck(torch.ops.kmgan_ext.assign_topk.default, (xg, cg, 2, "cpu", cosine), test_utils=utils)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_matches_torch_topk(device, backend, metric):
    """The peer: fast-pytorch-kmeans' MultiKMeans has no top-k, so torch.topk on each
    problem's float64 distances (cosine similarities) of the inputs' values; random data,
    no ties."""
    x, c = _batched(4, 60, 12, 5)
    xd, cd = x.double()[:, :, None, :], c.double()[:, None, :, :]
    if metric == "cosine":
        sim, want = torch.topk(torch.nn.functional.cosine_similarity(xd, cd, dim=-1), 4, dim=-1)
        want_d = 2 - 2 * sim
    else:
        want_d, want = torch.topk(((xd - cd) ** 2).sum(-1), 4, dim=-1, largest=False)
    labels, dist2 = km.assign(x.to(device), c.to(device), k=4, metric=metric, backend=backend)
    assert torch.equal(labels.cpu(), want)
    torch.testing.assert_close(dist2.cpu().double(), want_d, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_bad_input_is_named(device, backend):
    """A clean error naming the argument, before anything runs; the inputs are unchanged."""
    x, c = (t.to(device) for t in _batched(2, 5, 3, 4))
    x0, c0 = x.clone(), c.clone()
    cases = [
        (x, c, 4, ValueError, r"k must lie in \[1, K\] = \[1, 3\] \(centers.shape\[1\]\), got k = 4"),
        (x, c, 0, ValueError, r"k must lie in \[1, K\] = \[1, 3\]"),
        (x, c, -2, ValueError, r"k must lie in"),
        (x, c, True, TypeError, r"k must be an int or None, got bool"),
        (x, c, 2.0, TypeError, r"k must be an int or None, got float"),
        (x[0], c, 2, ValueError, r"x must be 3-D \(B, N, d\) with 3-D centers"),
        (x[None], c, 2, ValueError, r"x must be 3-D \(B, N, d\) with 3-D centers"),
        (x, c[:1], 2, ValueError, r"centers must hold 2 problems \(x.shape\[0\]\)"),
        (x, c[..., :3], 2, ValueError, r"centers must have 4 features \(x.shape\[2\]\)"),
        (x, c[:, :0], 1, ValueError, r"centers must hold at least one center per problem \(K >= 1\)"),
        (x, c.double(), 2, TypeError, r"x and centers must share one dtype"),
        (x.long(), c, 2, TypeError, r"x must be float32, float16, bfloat16 or float64"),
        (x.tolist(), c, 2, TypeError, r"x must be a torch.Tensor"),
    ]
    for xa, ca, k, err, match in cases:
        with pytest.raises(err, match=match):
            km.assign(xa, ca, k=k, backend=backend)
    assert torch.equal(x, x0) and torch.equal(c, c0)


def test_native_op_checks_batched_k():
    x, c = _batched(2, 4, 5, 3)
    with pytest.raises(ValueError, match=r"k must lie in \[1, K\] = \[1, 5\] \(centers.shape\[1\]\)"):
        torch.ops.kmgan_ext.assign_topk_native(x, c, 6)
    with pytest.raises(ValueError, match="same B"):
        torch.ops.kmgan_ext.assign_topk_native(x, c[:1], 2)
