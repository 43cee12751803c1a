"""slcGAN (Noroozi 2020) in the trainer: each loss term against its equation written out by
hand (Algorithm 1 lines 14-15, 20, 27; Eq. 4 and 5), every optimizer step of an iteration
against the formula recomputed from the networks (and lowered by its step), which networks
each step updates (the paper: L_mi only G, L_aug only C, C only through real images), the
augmentation T, and short training runs (vectors, images, resume)."""
import math

import pytest
import torch
import torch.nn.functional as F
from test_train_gmgan import _owners
from test_train_steps import Spy, _trainer

from kmgan_ext.train import load_config, resume, train, slcgan
from kmgan_ext.train.checkpoint import newest_good
from kmgan_ext.train.config import ConfigError
from kmgan_ext.train.steps import frozen_bn

TINY = {"n_train": 128, "batch_size": 32, "feature_batch": 128, "progress": False, "threads": 1,
        "device": "cpu", "tensorboard": False}  # fmt: skip


# --------------------------------------------------------------------------- the loss terms
def test_d_loss_is_lines_14_15():
    u_r, s_r = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 1.0])
    u_f, s_f = torch.tensor([-2.0, 0.0]), torch.tensor([0.5, -0.5])
    # row 0: max(0,-1) + max(0,2) + max(0,-1) + max(0,1.5) = 3.5; row 1: 0.5 + 0 + 1 + 0.5 = 2
    assert float(slcgan.d_loss(u_r, s_r, u_f, s_f)) == 2.75


def test_generator_and_clusterer_adversarial_terms():
    u_f, s_f, s_r = torch.tensor([1.0, -3.0]), torch.tensor([0.25, 2.0]), torch.tensor([0.5, -1.5, 4.0])
    assert float(slcgan.g_adv_loss(u_f, s_f)) == ((-1.0 - 0.25) + (3.0 - 2.0)) / 2  # line 20
    assert float(slcgan.c_adv_loss(s_r)) == 1.0  # line 27: mean s_r


def test_mi_loss_is_eq_4():
    torch.manual_seed(1)
    logits, c = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    want = 0.0
    for i in range(5):  # -log p(y = c | G(z, c)), p = softmax
        z = sum(math.exp(v) for v in logits[i].tolist())
        want += -math.log(math.exp(float(logits[i, c[i]])) / z)
    assert float(slcgan.mi_loss(logits, c)) == pytest.approx(want / 5, rel=1e-6)


def test_aug_loss_is_eq_5():
    torch.manual_seed(2)
    lx, lt = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    want = 0.0
    for i in range(4):  # sum_c -p(y = c | x_t) log p(y = c | x)
        p = [math.exp(v) for v in lx[i].tolist()]
        q = [math.exp(v) for v in lt[i].tolist()]
        want += sum(-(q[c] / sum(q)) * math.log(p[c] / sum(p)) for c in range(3))
    assert float(slcgan.aug_loss(lx, lt)) == pytest.approx(want / 4, rel=1e-6)
    # both views carry C's gradient (Eq. 5 minimises over C through p and q)
    a, b = lx.clone().requires_grad_(), lt.clone().requires_grad_()
    slcgan.aug_loss(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


# --------------------------------------------------------------------------- one iteration
def _replay(tr, x):
    """The draws the next iteration makes, in its order: (eps, c) per D step, (eps, c) of the
    G step, then the augmented batch."""
    g = torch.Generator(device=tr.device)
    g.set_state(tr.z_gen.get_state())
    prior = tr.G_raw.prior
    d = [prior.sample_noise(x.shape[0], g, tr.device) for _ in range(tr.cfg["d_steps"])]
    gs = prior.sample_noise(x.shape[0], g, tr.device)
    x_t = slcgan.augment(x, g, 0.0, 1.0, False)
    return d, gs, x_t


def test_slcgan_iteration_is_algorithm_1(tmp_path, monkeypatch):
    # spectral norm off: its power iteration moves the weights a little at every forward
    tr = _trainer(tmp_path, model="slcgan", spectral_norm=False, slc_lambda_mi=0.7, slc_lambda_aug=1.3)
    x = tr._input(tr.data.dataset[list(range(32))])
    (d_noise,), (eps, c), x_t = _replay(tr, x)
    C, D, G = tr.clusterer, tr.D_raw, tr.G_raw
    oh = lambda lab: F.one_hot(lab, 4).double()  # noqa: E731

    def run(fn):
        with torch.no_grad(), frozen_bn(D, G, C):
            return fn()

    def l_d():
        def f():
            u_r, s_r = D(x, torch.softmax(C(x).double(), 1).float())
            u_f, s_f = D(G(*d_noise), oh(d_noise[1]).float())
            hinge = F.relu(1 - u_r.double()) + F.relu(1 - s_r.double()) + F.relu(1 + u_f.double()) + F.relu(1 + s_f.double())
            return float(hinge.mean())

        return run(f)

    def l_g():
        def f():
            fake = G(eps, c)
            u_f, s_f = D(fake, oh(c).float())
            l_mi = -torch.log_softmax(C(fake).double(), 1)[torch.arange(32), c].mean()
            return float((-u_f.double() - s_f.double()).mean() + 0.7 * l_mi)

        return run(f)

    def l_c():
        def f():
            logits = C(x).double()
            _, s_r = D(x, torch.softmax(logits, 1).float())
            q = torch.softmax(C(x_t).double(), 1)
            return float(s_r.double().mean() + 1.3 * -(q * torch.log_softmax(logits, 1)).sum(1).mean())

        return run(f)

    spy = Spy(monkeypatch, {"L_D": l_d, "L_G": l_g, "L_C": l_c}, module=slcgan)
    out = slcgan.slcgan_iteration(tr, x)
    assert spy.seen == ["L_D", "L_G", "L_C"]
    assert {"L_D", "L_G", "L_C", "L_mi", "L_aug"} <= set(out)


def test_each_loss_updates_only_its_player(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, model="slcgan", d_steps=2)
    seen = _owners(monkeypatch, slcgan, {"D": tr.D_raw, "G": tr.G_raw, "C": tr.clusterer})
    slcgan.slcgan_iteration(tr, tr._input(tr.data.dataset[list(range(32))]))
    # D's steps: no gradient to G or C; G's (adversarial + L_mi): none to D or C; C's
    # (adversarial + L_aug, real images only): none to D or G
    assert seen["L_D"] == {"grad": {"D"}, "changed": {"D"}}
    assert seen["L_G"] == {"grad": {"G"}, "changed": {"G"}}
    assert seen["L_C"] == {"grad": {"C"}, "changed": {"C"}}


def test_networks():
    cfg = load_config("synthetic", {"model": "slcgan", "k": 5})
    G, D, C = slcgan.build(cfg, "dcgan28", (1, 28, 28))
    eps, c = G.prior.sample_noise(6, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert c.min() >= 0 and c.max() < 5  # p_c uniform over K
    img = G(eps, c)
    assert img.shape == (6, 1, 28, 28)
    u, s = D(img, F.one_hot(c, 5).float())
    assert u.shape == s.shape == (6,) and C(img).shape == (6, 5)
    # G's batch norms are conditional: a different c, another image from the same z
    assert not torch.equal(G(eps, (c + 1) % 5), img)
    # s = w^T f + b + <V y, f>: the joint term moves with y, the unary one does not
    u2, s2 = D(img, F.one_hot((c + 1) % 5, 5).float())
    assert torch.equal(u, u2) and not torch.equal(s, s2)
    sn = [m for m in list(G.modules()) + list(C.modules()) if hasattr(m, "parametrizations")]
    assert len(sn) >= 4  # spectral norm in C and G (the paper's "in both C and G")


def test_augmentation_is_a_shift_and_a_jitter(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 12, 12)
    out = slcgan.augment(x, g, 0.0, 1.0, flip=True)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    monkeypatch.setattr(slcgan, "CONTRAST", 0.0)
    monkeypatch.setattr(slcgan, "BRIGHTNESS", 0.0)
    out = slcgan.augment(x, g, 0.0, 1.0, flip=False)
    pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(8):  # each row: some crop of the image padded by 2
        assert any(torch.equal(out[i], pad[i, :, a : a + 12, b : b + 12]) for a in range(5) for b in range(5)), i
    v = torch.rand(4, 100)
    assert (slcgan.augment(v, g, 0.0, 1.0, False) - v).abs().max() < 0.2  # vectors: small noise


def test_slcgan_config_checks():
    with pytest.raises(ConfigError, match="prior must be normal"):
        load_config("synthetic", {"model": "slcgan", "prior": "gm_static"})
    with pytest.raises(ConfigError, match="d_steps"):
        load_config("synthetic", {"model": "slcgan", "d_steps": 0})


# --------------------------------------------------------------------------- training runs
@pytest.mark.parametrize("dataset", ["synthetic", "mnist5k"])
def test_slcgan_trains_a_few_steps(tmp_path, dataset):
    cfg = load_config("synthetic", {**TINY, "model": "slcgan", "max_steps": 2, "dataset": dataset, "eval_samples": 64})
    s = train(cfg, str(tmp_path))
    assert s["status"] == "max_steps" and s["steps"] == 2
    assert 0.0 <= s["cluster_acc"] <= 1.0 and 1 <= s["cluster_clusters_used"] <= cfg["k"]
    assert all(k in s for k in ("final_L_C", "final_L_mi", "final_L_aug"))


def test_slcgan_resume_is_exact(tmp_path):
    over = {**TINY, "model": "slcgan", "epochs": 2, "checkpoint_every": 1, "n_train": 64}
    a = train(load_config("synthetic", over), str(tmp_path / "a"))
    train(load_config("synthetic", {**over, "epochs": 1}), str(tmp_path / "b"))
    b = resume(str(tmp_path / "b"), {"epochs": 2})
    assert a["steps"] == b["steps"] == 4
    sa = torch.load(newest_good(str(tmp_path / "a" / "checkpoints")), weights_only=False)
    sb = torch.load(newest_good(str(tmp_path / "b" / "checkpoints")), weights_only=False)
    for part in ("G", "D", "clusterer"):
        for key, t in sa[part].items():
            assert torch.equal(t, sb[part][key]), (part, key)
