"""One KM-GAN training iteration against one DCGAN iteration of the same networks.

op train_step (batch 64, 28x28x1, z=100, d=100 features, K=10, Adam 2e-4/0.5, clip 1):
  dcgan            DCGAN: D step (BCE on real/fake logits), G step (non-saturating BCE)
  kmgan-torch      KM-GAN (REPRODUCTION.md, Algorithm 1): D step on L_D = ||D(x) - C[l]|| -
                   ||D(G(z)) - C[l_g]|| and weight clipping, G step on L_G, joint step on
                   L_center (Eq. 4), then both center sets updated with recomputed features;
                   the clustering ops written in plain torch (cdist argmin, norm, index_add)
  kmgan-kmgan_ext-<b>  the same iteration with km.assign / km.assigned_distance /
                   km.kmgan_center_loss / km.minibatch_update_ on backend b
Each kmgan row is checked as a whole against the same first iteration run in float64 with
kmgan_ext.reference's ops: losses, both center sets and counts after the updates, and the
parameters after every step, each at most twice as far from it as plain float32 torch's
(kmgan-torch, itself held to fixed float32 bounds on its losses and centers; see
iteration_close for why parameters are judged by distance, not element by element).
Each row carries ``overhead_vs_dcgan_pct``: what KM-GAN's iteration costs over DCGAN's, all
of it (its extra network passes by design, and the clustering). The baseline of
speedup_vs_torch is kmgan-torch.
op kmgan_loss_block (mode full): the clustering part alone on fixed features: the three
assignments, L_D, L_G and L_center, forward and backward (kmgan_ext's rows: km.kmgan_losses;
issue 4: at most 8 kernel launches on a GPU; ``kernel_launches`` counts the CUDA kernels
torch.profiler sees in one call).

The networks are kmgan_ext.train.models.dcgan28 (the trainer's DCGAN MNIST nets) when that
module imports, else the same layers defined here (--tiny: two-layer MLPs, to keep the test
fast; each row's note names the networks). The iteration itself is written here from
the paper's formulas: the trainer's loop also does logging, checkpoints and data loading,
which a microbenchmark must leave out. Images are random tensors (speed does not depend on
pixel values).

Run alone: python bench/bench_train_step.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import copy
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402
from bench_center_loss import torch_center_loss  # noqa: E402
from bench_minibatch_update import torch_update_  # noqa: E402

BASELINE = "kmgan-torch"
Z_DIM = 100
LR, BETAS, CLIP = 2e-4, (0.5, 0.999), 1.0


def shapes(ctx: H.Ctx) -> list[dict]:
    paper = dict(batch=64, d=100, K=10)
    return ctx.size(tiny=[dict(batch=16, d=100, K=10)], quick=[paper], full=[paper, dict(batch=256, d=100, K=10)])


# --------------------------------------------------------------------------- networks
def networks(feature_dim: int, tiny: bool = False) -> tuple[nn.Module, nn.Module, str]:
    if tiny:  # --tiny tests the code path; the DCGAN nets' 13M parameters would dominate it
        # Each with a bias just before a batch norm, as the DCGAN nets: its true gradient is
        # 0, which Adam turns into +-lr steps on float32 rounding noise (iteration_close).
        g = nn.Sequential(
            nn.Linear(Z_DIM, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 784), nn.Sigmoid(),
            nn.Unflatten(1, (1, 28, 28)),
        )  # fmt: skip
        d = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 64), nn.BatchNorm1d(64), nn.LeakyReLU(0.2), nn.Linear(64, feature_dim),
            nn.Sigmoid(),
        )  # fmt: skip
        return g, d, "two-layer MLPs with batch norm (--tiny run only)"
    try:
        from kmgan_ext.train.models import dcgan28

        g, d = dcgan28(Z_DIM, 1, feature_dim)
        return g, d, "kmgan_ext.train.models.dcgan28"
    except Exception:
        pass

    def up(cin, cout):
        return nn.ConvTranspose2d(cin, cout, 4, 2, 1)

    def down(cin, cout):
        return nn.Conv2d(cin, cout, 4, 2, 1)

    g = nn.Sequential(
        nn.Linear(Z_DIM, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
        nn.Linear(1024, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (128, 7, 7)),
        up(128, 64), nn.BatchNorm2d(64), nn.ReLU(), up(64, 1), nn.Sigmoid(),
    )  # fmt: skip
    d = nn.Sequential(
        down(1, 64), nn.LeakyReLU(0.2),
        down(64, 128), nn.BatchNorm2d(128), nn.LeakyReLU(0.2), nn.Flatten(),
        nn.Linear(128 * 7 * 7, 1024), nn.BatchNorm1d(1024), nn.LeakyReLU(0.2),
        nn.Linear(1024, feature_dim), nn.Sigmoid(),
    )  # fmt: skip
    return g, d, "DCGAN MNIST layers defined in bench_train_step.py (kmgan_ext.train.models not importable)"


# --------------------------------------------------------------------------- clustering ops
class TorchOps:
    """The clustering steps as a user writes them in plain torch."""

    def assign(self, f, c):
        return torch.cdist(f, c).argmin(1)

    def pull(self, f, labels, c):
        return (f - c[labels]).norm()

    def center(self, fr, lr, cr, ff, lf, cf):
        return torch_center_loss(fr, lr, cr, ff, lf, cf)

    def update_(self, c, n, f, labels):
        torch_update_(c, n, f, labels)


class KmOps:
    def __init__(self, backend: str):
        import kmgan_ext as km

        self.km, self.b = km, backend

    def assign(self, f, c):
        return self.km.assign(f, c, backend=self.b)[0]

    def pull(self, f, labels, c):
        return self.km.assigned_distance(f, labels, c, reduction="fro", backend=self.b)

    def center(self, fr, lr, cr, ff, lf, cf):
        return self.km.kmgan_center_loss(fr, lr, cr, ff, lf, cf, backend=self.b)

    def update_(self, c, n, f, labels):
        self.km.minibatch_update_(c, n, f, labels, backend=self.b)


# --------------------------------------------------------------------------- state + steps
class State:
    def __init__(self, shape: dict, device: torch.device, dcgan: bool, tiny: bool = False):
        torch.manual_seed(7)
        g, d, self.arch = networks(shape["d"], tiny)
        if dcgan:
            d = nn.Sequential(d, nn.Linear(shape["d"], 1), nn.Flatten(0))
        self.G, self.D = g.to(device), d.to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), LR, betas=BETAS)
        self.opt_d = torch.optim.Adam(self.D.parameters(), LR, betas=BETAS)
        gen = torch.Generator().manual_seed(8)
        b, k = shape["batch"], shape["K"]
        self.x = (torch.rand(b, 1, 28, 28, generator=gen)).to(device)
        self.z = torch.randn(b, Z_DIM, generator=gen).to(device)
        if not dcgan:
            with torch.no_grad():  # centers start at features of real / generated samples
                self.C = self.D(self.x)[:k].clone()
                self.Ch = self.D(self.G(self.z))[:k].clone()
            self.nC = torch.full((k,), 100, dtype=torch.int64, device=device)
            self.nCh = self.nC.clone()

    def clone(self) -> "State":
        return copy.deepcopy(self)


def dcgan_step(s: State):
    ones = torch.ones(s.x.shape[0], device=s.x.device)
    fake = s.G(s.z)
    loss_d = F.binary_cross_entropy_with_logits(s.D(s.x), ones) + F.binary_cross_entropy_with_logits(
        s.D(fake.detach()), 0 * ones
    )
    s.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    s.opt_d.step()
    loss_g = F.binary_cross_entropy_with_logits(s.D(fake), ones)
    s.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    s.opt_g.step()
    return torch.stack([loss_d.detach(), loss_g.detach()])


def kmgan_step(s: State, ops):
    # D step: pull real features to their centers, push fake ones from theirs (Eq. 5).
    fr, ff = s.D(s.x), s.D(s.G(s.z).detach())
    lr, lf = ops.assign(fr.detach(), s.C), ops.assign(ff.detach(), s.C)
    loss_d = ops.pull(fr, lr, s.C) - ops.pull(ff, lf, s.C)
    s.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    s.opt_d.step()
    with torch.no_grad():
        for p in s.D.parameters():
            p.clamp_(-CLIP, CLIP)
    # G step: pull fake features to the real centers (Eq. 6).
    ff = s.D(s.G(s.z))
    loss_g = ops.pull(ff, ops.assign(ff.detach(), s.C), s.C)
    s.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    s.opt_g.step()
    # Joint step on the center loss (Eq. 4), real features to C, fake ones to C-hat.
    fr, ff = s.D(s.x), s.D(s.G(s.z))
    lr, lfh = ops.assign(fr.detach(), s.C), ops.assign(ff.detach(), s.Ch)
    loss_c = ops.center(fr, lr, s.C, ff, lfh, s.Ch)
    s.opt_d.zero_grad(set_to_none=True)
    s.opt_g.zero_grad(set_to_none=True)
    loss_c.backward()
    s.opt_d.step()
    s.opt_g.step()
    # Center updates with the features of the updated networks.
    with torch.no_grad():
        fr, ff = s.D(s.x), s.D(s.G(s.z))
        ops.update_(s.C, s.nC, fr, ops.assign(fr, s.C))
        ops.update_(s.Ch, s.nCh, ff, ops.assign(ff, s.Ch))
    return torch.stack([loss_d.detach(), loss_g.detach(), loss_c.detach()])


def first_iteration(base: State, ops):
    s = base.clone()
    return kmgan_step(s, ops), s


def float64_copy(base: State) -> State:
    """base in float64: networks, images, noise and centers (and fresh Adams: their state is
    empty before the first step either way)."""
    s = base.clone()
    s.G.double(), s.D.double()
    s.opt_g = torch.optim.Adam(s.G.parameters(), LR, betas=BETAS)
    s.opt_d = torch.optim.Adam(s.D.parameters(), LR, betas=BETAS)
    s.x, s.z, s.C, s.Ch = (t.double() for t in (s.x, s.z, s.C, s.Ch))
    return s


def truth_iteration(base: State):
    """The first iteration in float64 with kmgan_ext.reference's ops: the truth every row is
    judged against (tests/test_bench.py: the plain torch ops give the same to ~1e-9)."""
    return first_iteration(float64_copy(base), KmOps("reference"))


def _params(s: State, net: str) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double().cpu() for p in getattr(s, net).parameters()])


def _max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().double().cpu() - want.detach().double().cpu()).abs().max())


def iteration_close(out, truth, plain=None) -> tuple[bool, str]:
    """A whole iteration against the float64 truth (``truth_iteration``): its three losses,
    both center sets and their counts after the center updates, and every parameter of D and
    G after the D, G and joint center steps (a wrong center-loss backward changes the
    parameters, not the losses the iteration reports).

    The yardstick is plain float32 torch's own distance to the truth (``plain``: kmgan-torch's
    first iteration), as bench/_correctness.tolerances does for the ops: a row may be at most
    twice as far. Parameters are compared by the L2 distance of each network's parameter
    vector, not element by element: Adam's early steps are about lr * sign(grad), so a
    gradient whose true value is within float32 rounding of 0 (a bias just before a batch
    norm has exactly 0) moves by +-lr on the sign of its rounding noise; measured on the
    DCGAN nets, plain float32 torch's G differs from the float64 run beyond 1e-6 in 27% of its
    parameters, as kmgan_ext's does. ``plain`` None: ``out`` is plain torch itself, whose
    losses and centers are held to fixed float32 bounds (rtol 1e-3, atol 1e-4) instead."""
    (losses, s), (w_losses, w) = out, truth
    if plain is None:
        results = [
            H.close("L_D, L_G, L_center", losses, w_losses, rtol=1e-3, atol=1e-4),
            H.close("centers C after the update", s.C, w.C, rtol=1e-3, atol=1e-4),
            H.close("centers C-hat after the update", s.Ch, w.Ch, rtol=1e-3, atol=1e-4),
        ]
    else:
        p_losses, ps = plain
        results = []
        for name, got, want, pl in (
            ("L_D, L_G, L_center", losses, w_losses, p_losses),
            ("centers C after the update", s.C, w.C, ps.C),
            ("centers C-hat after the update", s.Ch, w.Ch, ps.Ch),
        ):
            floor = 1e-5 * (1 + float(want.abs().max()))
            results.append(H.close(name, got, want, rtol=0.0, atol=max(floor, 2 * _max_err(pl, want))))
    counts_ok = torch.equal(s.nC.cpu(), w.nC.cpu()) and torch.equal(s.nCh.cpu(), w.nCh.cpu())
    results.append((counts_ok, "center counts" + ("" if counts_ok else " DIFFER from the float64 run's")))
    for net in ("D", "G"):
        want = _params(w, net)
        dist = float((_params(s, net) - want).norm())
        if plain is None:
            results.append((math.isfinite(dist), f"{net} parameters {dist:.2g} from the float64 run (plain torch: the yardstick)"))
            continue
        # The floor: float32 rounding of the parameters themselves, and one parameter's
        # Adam step taken on the other sign in each of the (up to) two steps of a network.
        floor = 4 * LR + 1e-6 * float(want.norm())
        allowed = max(floor, 2 * float((_params(plain[1], net) - want).norm()))
        ok = dist <= allowed
        results.append((ok, f"{net} parameters {dist:.2g} from the float64 run{'' if ok else ', too far'} (allowed "
                        f"{allowed:.2g}: twice plain float32 torch's distance)"))  # fmt: skip
    return H.all_ok(*results)


def loss_block_terms(ops, fr, ff, C, Ch):
    """(L_D, L_G, L_center) of one iteration on given features; kmgan_ext's rows call the
    library's own block, km.kmgan_losses."""
    if isinstance(ops, KmOps):
        t = ops.km.kmgan_losses(fr, ff, C, Ch, backend=ops.b)
        return t.loss_d, t.loss_g, t.loss_center
    lr, lf = ops.assign(fr.detach(), C), ops.assign(ff.detach(), C)
    lfh = ops.assign(ff.detach(), Ch)
    loss_d = ops.pull(fr, lr, C) - ops.pull(ff, lf, C)
    loss_g = ops.pull(ff, lf, C)
    return loss_d, loss_g, ops.center(fr, lr, C, ff, lfh, Ch)


def loss_block(ops, fr, ff, C, Ch):
    """The timed call: the three losses, and (mode full) one backward of their sum."""
    return sum(loss_block_terms(ops, fr, ff, C, Ch))


LOSS_NAMES = ("L_D", "L_G", "L_center")


def per_loss(ops, fr, ff, C, Ch) -> list:
    """[(value, [grad real, grad fake])] of each loss on its own, on copies of the features:
    checked apart, because in L_D + L_G the fake pull's gradient cancels (a block that drops
    it would pass a check of the sum)."""
    out = []
    for i in range(3):
        a, b = fr.detach().clone().requires_grad_(), ff.detach().clone().requires_grad_()
        loss = loss_block_terms(ops, a, b, C, Ch)[i]
        grads = torch.autograd.grad(loss, [a, b], allow_unused=True)
        out.append((loss.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(grads, (a, b))]))
    return out


def loss_block_truth(fr, ff, C, Ch) -> list:
    """per_loss in float64 from kmgan_ext.reference, with the float64 labels."""
    from kmgan_ext import reference as R

    lr, lf, lfh = R.assign(fr, C)[0], R.assign(ff, C)[0], R.assign(ff, Ch)[0]
    c64, ch64 = C.double(), Ch.double()
    out = []
    for i in range(3):
        a = fr.detach().double().requires_grad_()
        b = ff.detach().double().requires_grad_()
        pull_r, pull_f = R.assigned_distance(a, lr, c64), R.assigned_distance(b, lf, c64)
        loss = (pull_r - pull_f, pull_f, R.center_loss(a, lr, c64, b, lfh, ch64))[i]
        grads = torch.autograd.grad(loss, [a, b], allow_unused=True)
        out.append((loss.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(grads, (a, b))]))
    return out


def count_kernels(fn, ctx: H.Ctx) -> tuple[int | None, str]:
    """CUDA kernels launched by one call of fn, as torch.profiler records them."""
    if not ctx.cuda:
        return None, "kernel launches are counted on a GPU only"
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()  # warm: no first-call allocations or JIT in the count
        torch.cuda.synchronize(ctx.device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(ctx.device)
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        kernels = [n for n in names if not n.startswith(("Memcpy", "Memset"))]
        return len(kernels), f"{len(kernels)} kernels, {len(names) - len(kernels)} memcpy/memset"
    except Exception as e:
        return None, f"profiler failed: {type(e).__name__}: {e}"


def run(ctx: H.Ctx) -> list[dict]:
    rows: list[dict] = []
    for shape in shapes(ctx):
        ctx.log(f"  train_step {shape}")
        base_k = State(shape, ctx.device, dcgan=False, tiny=ctx.tiny)
        base_d = State(shape, ctx.device, dcgan=True, tiny=ctx.tiny)
        arch = base_k.arch
        items = H.Work(bytes=0, items=shape["batch"], item_unit="images")
        plain = H.Lazy(lambda: first_iteration(base_k, TorchOps()))
        step_truth = H.Lazy(lambda: truth_iteration(base_k))

        # ---------------- whole iterations
        def dcgan_make():
            s = base_d.clone()
            return lambda: dcgan_step(s)

        def dcgan_check(out):
            ok = bool(torch.isfinite(out).all())
            return ok, "losses finite (no reference for DCGAN's losses)" if ok else "non-finite losses"

        def km_make(ops_factory):
            def make():
                ops = ops_factory()
                s = base_k.clone()
                return lambda: (kmgan_step(s, ops), s)  # the state is read by the check only

            return make

        def km_check_for(name):
            def check(out):
                return iteration_close(out, step_truth(), None if name == BASELINE else plain())

            return check

        entries = [("dcgan", dcgan_make, dcgan_check, None), (BASELINE, km_make(TorchOps), km_check_for(BASELINE), None)]
        backends = H.kmgan_backends(ctx)
        for b, why in backends:
            entries.append((f"kmgan-kmgan_ext-{b}", km_make(lambda b=b: KmOps(b)), km_check_for(f"kmgan-kmgan_ext-{b}"), why))
        step_rows = []
        for name, make, chk, why in entries:
            step_rows += H.run_provider(
                ctx, "train_step", shape, name, make, chk, work=items, absent=why, note=f"networks: {arch}"
            )
        dc = next((r["median_ms"] for r in step_rows if r["provider"] == "dcgan" and r["correct"]), None)
        for r in step_rows:
            r["overhead_vs_dcgan_pct"] = (
                100.0 * (r["median_ms"] - dc) / dc if dc and r["median_ms"] and r["provider"] != "dcgan" else None
            )
        rows += step_rows

        # ---------------- the loss block alone
        with torch.no_grad():
            fr = base_k.D(base_k.x).detach().requires_grad_()
            ff = base_k.D(base_k.G(base_k.z)).detach().requires_grad_()
        C, Ch = base_k.C, base_k.Ch
        truth = H.Lazy(lambda: loss_block_truth(fr, ff, C, Ch))

        def block_tols():
            plain = per_loss(TorchOps(), fr, ff, C, Ch)
            tols = []
            for p, (wl, wg) in zip(plain, truth()):
                floors = [1e-5 * (1 + float(wl.abs()))] + [1e-5 * (1 + float(g.abs().max())) for g in wg]
                tols.append(H.tolerances(p, (wl, wg), floors))
            return tols

        tol = H.Lazy(block_tols)

        def block_check_for(factory):
            def check(out):
                # The timed output is the sum; its parts are checked one by one, each gradient too.
                got = per_loss(factory(), fr, ff, C, Ch)
                return H.all_ok(*(
                    H.check_loss(g, w, t, (name, f"d{name}/d real features", f"d{name}/d fake features"))
                    for name, g, w, t in zip(LOSS_NAMES, got, truth(), tol())
                ))  # fmt: skip

            return check

        block_entries = [("kmgan-torch", TorchOps, None)] + [
            (f"kmgan-kmgan_ext-{b}", (lambda b=b: KmOps(b)), why) for b, why in backends
        ]
        bshape = dict(shape, features=f"{shape['batch']}x{shape['d']} real + fake")
        for name, factory, why in block_entries:

            def make(factory=factory):
                ops = factory()
                return lambda: loss_block(ops, fr, ff, C, Ch)

            brows = H.run_provider(
                ctx, "kmgan_loss_block", bshape, name, make, block_check_for(factory),
                work=H.Work(0, items=2 * shape["batch"]),
                modes=("full",), leaves=[fr, ff], absent=why,
            )  # fmt: skip
            for r in brows:
                r["kernel_launches"] = None
                if r["correct"] and r["median_ms"] is not None:
                    ops = factory()

                    def one():
                        fr.grad = ff.grad = None
                        loss_block(ops, fr, ff, C, Ch).backward()

                    r["kernel_launches"], msg = count_kernels(one, ctx)
                    r["note"] = msg
            rows += brows
    H.add_speedups(rows, BASELINE)
    return rows


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "train_step", *sys.argv[1:]])
