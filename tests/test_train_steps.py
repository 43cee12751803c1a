"""Each model's iteration computes the paper's losses, with the right signs, and each of its
optimizer steps moves the parameters so that the loss it stepped on goes down (issue 19: the
mutant "the trainer steps on -L_center" must fail here).

Every optimizer step of an iteration is intercepted: the loss handed to it is compared with
the formula computed here in float64 from the current networks (KM-GAN: Eq. 5, 6 and 4;
DCGAN: the non-saturating GAN), then the real step runs and the same loss -- same batch, same
noise, same labels and centers -- is recomputed under the updated parameters: it must be
lower. One Adam step of lr 2e-4 changes a loss by about -lr * sum|grad| to first order, so a
step on the negated loss raises it instead.
"""
import pytest
import torch
import torch.nn.functional as F

from kmgan_ext.train import Trainer, iterations, load_config, losses
from kmgan_ext.train import centers as cset
from kmgan_ext.train.steps import frozen_bn

TINY = {
    "n_train": 256,
    "batch_size": 32,
    "fake_pool": 128,
    "feature_batch": 128,
    "progress": False,
    "threads": 1,
    "device": "cpu",
    "tensorboard": False,
    "d_round": 1000,  # the center-loss step runs in every iteration here
    "d_round_mode": "steps",
}


def _trainer(tmp_path, **over):
    tr = Trainer(load_config("synthetic", {**TINY, **over}), str(tmp_path))
    cset.seed(tr)
    return tr


def _noise(tr, n):
    """The noise the next iteration will draw (a copy of its generator's state)."""
    g = torch.Generator(device=tr.device)
    g.set_state(tr.z_gen.get_state())
    return tr.G_raw.prior.sample_noise(n, g, tr.device)


def _nearest(f, c):
    return torch.cdist(f.double(), c.double()).argmin(1)


def _eq4(fr, lr, c, ff, lh, ch):
    """|| sum_m (c_m + S_m) / (1 + n_m) - sum_m (ĉ_m + Ŝ_m) / (1 + n̂_m) ||_1, float64."""

    def side(f, lab, cen):
        k = cen.shape[0]
        s = torch.zeros(k, f.shape[1], dtype=torch.float64).index_add(0, lab, f.double())
        n = torch.bincount(lab, minlength=k).double()
        return ((cen.double() + s) / (1 + n)[:, None]).sum(0)

    return float((side(fr, lr, c) - side(ff, lh, ch)).abs().sum())


class Spy:
    """Replaces iterations.optimizer_step / center_step: check the loss, step, check again."""

    def __init__(self, monkeypatch, formulas, module=iterations):
        """``module``: where the iteration looks its step functions up (gmgan.py and
        slcgan.py import optimizer_step themselves)."""
        self.formulas = formulas  # name -> () -> float: the loss under the current parameters
        self.seen = []
        real_opt, real_center = iterations.optimizer_step, iterations.center_step

        def optimizer_step(tr, opt, name, loss, clip=False):
            self._check(name, loss, lambda: real_opt(tr, opt, name, loss, clip=clip))

        def center_step(tr, loss):
            self._check("L_center", loss, lambda: real_center(tr, loss))

        monkeypatch.setattr(module, "optimizer_step", optimizer_step)
        if hasattr(module, "center_step"):
            monkeypatch.setattr(module, "center_step", center_step)

    def _check(self, name, loss, step):
        before = self.formulas[name]()
        assert float(loss.detach()) == pytest.approx(before, rel=1e-4, abs=1e-5), f"{name}: the value stepped on"
        step()
        after = self.formulas[name]()
        assert after < before, f"the {name} step raised {name}: {before!r} -> {after!r}"
        self.seen.append(name)


@pytest.mark.parametrize("model", ["kmgan", "generalized"])
def test_kmgan_iteration_losses_and_step_directions(tmp_path, monkeypatch, model):
    tr = _trainer(tmp_path, model=model, **({"lambda": 0.5} if model == "generalized" else {}))
    x = tr._input(tr.data.dataset[list(range(32))])
    for _ in range(2):  # two iterations on one fixed batch (centers move in between)
        eps, comp = _noise(tr, 32)
        C, Ch = tr.C_real.clone(), tr.C_fake.clone()

        def feats():
            with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw):
                return tr.D_raw(x).float(), tr.D_raw(tr.G_raw(eps, comp)).float()

        fr0, ff0 = feats()
        lr, lg, lh = _nearest(fr0, C), _nearest(ff0, C), _nearest(ff0, Ch)

        if model == "kmgan":  # Eq. 5, 6, 4 written out here

            def l_d():
                fr, ff = feats()
                return float((fr.double() - C[lr].double()).norm() - (ff.double() - C[lg].double()).norm())

            def l_g():
                return float((feats()[1].double() - C[lg].double()).norm())

        else:  # Eq. 7 adds lambda (L_intra - L_inter): the library's loss block, recomputed

            def l_d():
                fr, ff = feats()
                return float(tr.losses(fr, ff, C, Ch).loss_d)

            def l_g():  # L_inter against the first pass's real features, as Eq. 7's G step
                return float(tr.losses.generator_loss(feats()[1], lg, C, fr0))

        def l_c():
            fr, ff = feats()
            return _eq4(fr, lr, C, ff, lh, Ch)

        spy = Spy(monkeypatch, {"L_D": l_d, "L_G": l_g, "L_center": l_c})
        out = iterations.ITERATIONS[model](tr, x)
        assert spy.seen == ["L_D", "L_G", "L_center"] and out["center_step"]
        tr.step += 1
    # the returned labels are the nearest centers of the first pass
    assert torch.equal(out["labels_real"], lr) and torch.equal(out["labels_fake"], lh)


def test_center_loss_falls_over_steps_on_a_fixed_batch(tmp_path):
    """Only the center-loss step moves the networks (D and G steps off): Eq. 4 on a fixed
    batch with fixed centers and labels falls at the first step and stays below its start
    (an L1 norm near its kink lets Adam's later steps overshoot a little)."""
    tr = _trainer(tmp_path)
    x = tr._input(tr.data.dataset[list(range(32))])
    eps, comp = _noise(tr, 32)
    C, Ch = tr.C_real.clone(), tr.C_fake.clone()

    with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw):
        lr, lh = _nearest(tr.D_raw(x), C), _nearest(tr.D_raw(tr.G_raw(eps, comp)), Ch)

    def l_c():
        with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw):
            return _eq4(tr.D_raw(x), lr, C, tr.D_raw(tr.G_raw(eps, comp)), lh, Ch)

    values = [l_c()]
    for _ in range(4):
        loss = tr.losses.center_loss(tr.D(x).float(), lr, C, tr.D(tr.G(eps, comp)).float(), lh, Ch)
        iterations.center_step(tr, loss)
        values.append(l_c())
    assert values[1] < values[0] and max(values[1:]) < values[0], values


def test_dcgan_iteration_losses_and_step_directions(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, model="dcgan")
    x = tr._input(tr.data.dataset[list(range(32))])
    eps, comp = _noise(tr, 32)

    def logits():
        with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw):
            return tr.D_raw(x).double(), tr.D_raw(tr.G_raw(eps, comp)).double()

    def l_d():  # -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))), batch means
        lr, lf = logits()
        return float(F.softplus(-lr).mean() + F.softplus(lf).mean())

    def l_g():  # non-saturating: -log sigmoid(D(G(z)))
        return float(F.softplus(-logits()[1]).mean())

    spy = Spy(monkeypatch, {"L_D": l_d, "L_G": l_g})
    out = iterations.ITERATIONS["dcgan"](tr, x)
    assert spy.seen == ["L_D", "L_G"] and set(out) == {"L_D", "L_G"}


def test_dcgan_without_head_uses_mean_feature_as_probability(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, model="dcgan", dcgan_head="none")
    assert tr.D_raw.head is None
    x = tr._input(tr.data.dataset[list(range(32))])
    eps, comp = _noise(tr, 32)

    def probs():
        with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw):
            return tr.D_raw(x).double().mean(1), tr.D_raw(tr.G_raw(eps, comp)).double().mean(1)

    def l_d():
        pr, pf = probs()
        return float(-(pr.log().mean() + (1 - pf).log().mean()))

    def l_g():
        return float(-probs()[1].log().mean())

    spy = Spy(monkeypatch, {"L_D": l_d, "L_G": l_g})
    iterations.ITERATIONS["dcgan"](tr, x)
    assert spy.seen == ["L_D", "L_G"]


def test_reduced_iteration_step_directions(tmp_path, monkeypatch):
    """Algorithm 2: center step, D step, G step on the pixel-space centers' features."""
    tr = _trainer(tmp_path, model="reduced")
    x = tr._input(tr.data.dataset[list(range(32))])
    eps, comp = _noise(tr, 32)
    with torch.no_grad():
        fake = tr.G_raw(eps, comp)
    lr, lg = _nearest(x, tr.C_real), _nearest(fake.flatten(1), tr.C_real)
    imgs = tr.C_real.view(-1, *tr.model_shape())

    def feats():
        with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw):
            return tr.D_raw(imgs).double(), tr.D_raw(x).double(), tr.D_raw(tr.G_raw(eps, comp)).double()

    def l_c():  # ||D(C~_real) - D(C~_gen)||_1 over the batch's rows
        fc = feats()[0]
        return float((fc[lr] - fc[lg]).abs().sum())

    def l_d():
        fc, fr, _ = feats()
        return float((fr - fc[lr]).norm())

    def l_g():
        fc, _, ff = feats()
        return float((ff - fc[lg]).norm())

    spy = Spy(monkeypatch, {"L_center": l_c, "L_D": l_d, "L_G": l_g})
    iterations.ITERATIONS["reduced"](tr, x)
    assert spy.seen == ["L_center", "L_D", "L_G"]


# ------------------------------------------------------------------ the gradient penalty
def test_gradient_penalty_known_answers():
    from kmgan_ext.train import penalty

    w = torch.tensor([3.0, 4.0], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64).requires_grad_(True)
    # a linear critic has gradient w everywhere: (||w|| - 1)^2 = (5 - 1)^2
    assert float(penalty.gradient_penalty(lambda v: v @ w, x)) == pytest.approx(16.0)
    # KM-GAN's critic with D = identity: the distance to the nearest center has a unit gradient
    centers = torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    crit = penalty.kmgan_critic(lambda v: v, centers, backend="reference")
    pts = torch.tensor([[1.0, 2.0], [9.0, 7.0]], dtype=torch.float64, requires_grad=True)
    d = crit(pts).detach()
    assert float(d[0]) == pytest.approx(5**0.5) and float(d[1]) == pytest.approx(10**0.5)
    assert float(penalty.gradient_penalty(crit, pts)) == pytest.approx(0.0, abs=1e-12)
    # x_hat lies on the segment between its real and fake rows
    a, b = torch.zeros(200, 3), torch.ones(200, 3)
    h = penalty.interpolate(a, b, torch.Generator().manual_seed(0))
    assert h.requires_grad and bool((h[:, :1] == h).all()) and 0.0 < float(h.min()) and float(h.max()) < 1.0


def test_gradient_penalty_enters_the_d_step(tmp_path, monkeypatch):
    """gp_weight > 0: L_D stepped on = Eq. 5 + weight * penalty (the logged GP)."""
    tr = _trainer(tmp_path, gp_weight=10.0, d_round=0)
    x = tr._input(tr.data.dataset[list(range(32))])
    seen = {}
    real = iterations.optimizer_step

    def spy(tr_, opt, name, loss, clip=False):
        seen[name] = float(loss)
        real(tr_, opt, name, loss, clip=clip)

    monkeypatch.setattr(iterations, "optimizer_step", spy)
    eps, comp = _noise(tr, 32)
    with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw):
        fr, ff = tr.D_raw(x), tr.D_raw(tr.G_raw(eps, comp))
    C = tr.C_real.clone()
    eq5 = float((fr.double() - C[_nearest(fr, C)].double()).norm() - (ff.double() - C[_nearest(ff, C)].double()).norm())
    out = iterations.ITERATIONS["kmgan"](tr, x)
    assert float(out["GP"]) > 0
    assert seen["L_D"] == pytest.approx(eq5 + 10.0 * float(out["GP"]), rel=1e-5)
