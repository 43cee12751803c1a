"""GM-GAN (Ben-Yosef & Weinshall 2018) in the trainer: its Algorithm 1 losses transcribed
(each optimizer step sees exactly them and lowers them), which networks each step updates, the
quality-diversity control (z | k ~ N(mu_k, s * Sigma_k)), the clustering of Algorithm 2, and a
short training run of ``model=gmgan`` on vectors and on images."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from test_train_steps import Spy, _trainer

from kmgan_ext.train import gmgan, load_config, train
from kmgan_ext.train.config import ConfigError
from kmgan_ext.train.evaluate import generate_images
from kmgan_ext.train.prior import LatentPrior
from kmgan_ext.train.steps import frozen_bn

TINY = {"n_train": 256, "batch_size": 32, "feature_batch": 128, "progress": False, "threads": 1,
        "device": "cpu", "tensorboard": False, "gm_cluster_samples": 64, "gm_cluster_epochs": 2}  # fmt: skip


def _draws(tr, *sizes):
    """The noise the next iteration draws, in order (a copy of its generator's state)."""
    g = torch.Generator(device=tr.device)
    g.set_state(tr.z_gen.get_state())
    return [tr.G_raw.prior.sample_noise(n, g, tr.device) for n in sizes]


def _owners(monkeypatch, module, nets: dict):
    """Wrap ``module.optimizer_step``: per step name, which of ``nets`` got gradients and which
    changed (all .grad cleared before each step)."""
    seen = {}
    real = module.optimizer_step

    def step(tr, opt, name, loss, clip=False):
        before = {k: [p.detach().clone() for p in m.parameters()] for k, m in nets.items()}
        for m in nets.values():
            for p in m.parameters():
                p.grad = None
        real(tr, opt, name, loss, clip=clip)
        seen[name] = {
            "grad": {k for k, m in nets.items() if any(p.grad is not None for p in m.parameters())},
            "changed": {k for k, m in nets.items() if any(not torch.equal(a, p) for a, p in zip(before[k], m.parameters()))},
        }

    monkeypatch.setattr(module, "optimizer_step", step)
    return seen


def test_gmgan_iteration_is_algorithm_1(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, model="gmgan", prior="gm_static", g_batch_size=48)
    assert tr.D_raw.head is not None and tr.C_real is None and tr.opt_C is None
    x = tr._input(tr.data.dataset[list(range(32))])
    (eps, comp), (eps_g, comp_g) = _draws(tr, 32, 48)  # b_D rows for D, then b_G for G

    def logits():
        with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw):
            d = tr.D_raw
            return d(x).double(), d(tr.G_raw(eps, comp)).double(), d(tr.G_raw(eps_g, comp_g)).double()

    def l_d():  # line 16: 1/(2 b_D) sum_j [-log D(x_j) - log(1 - D(x^_j))]
        lr, lf, _ = logits()
        return float((F.softplus(-lr).sum() + F.softplus(lf).sum()) / (2 * 32))

    def l_g():  # lines 25-26: 1/b_G sum_j -log D(x^_j)
        return float(F.softplus(-logits()[2]).sum() / 48)

    spy = Spy(monkeypatch, {"L_D": l_d, "L_G": l_g}, module=gmgan)
    out = gmgan.gmgan_iteration(tr, x)
    assert spy.seen == ["L_D", "L_G"] and set(out) == {"L_D", "L_G"}


@pytest.mark.parametrize("prior", ["gm_static", "gm_dynamic"])
def test_gmgan_steps_update_only_their_network(tmp_path, monkeypatch, prior):
    tr = _trainer(tmp_path, model="gmgan", prior=prior)
    seen = _owners(monkeypatch, gmgan, {"D": tr.D_raw, "G": tr.G_raw, "prior": tr.G_raw.prior})
    gmgan.gmgan_iteration(tr, tr._input(tr.data.dataset[list(range(32))]))
    assert seen["L_D"] == {"grad": {"D"}, "changed": {"D"}}
    # G's step reaches D's parameters' gradients (backward through D) but steps only G;
    # a dynamic prior's mu_k and A_k are G's parameters, learned with it
    moved = {"G", "prior"} if prior == "gm_dynamic" else {"G"}
    assert seen["L_G"]["changed"] == moved


def test_quality_diversity_control_scales_the_covariance():
    torch.manual_seed(0)
    eps, comp = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    for kind in ("normal", "gm_static", "gm_dynamic"):
        p = LatentPrior(kind, 3, 2, 0.1, 0.15).double()
        for s in (0.25, 1.0, 2.0):
            if kind == "normal":
                want = math.sqrt(s) * eps
            elif kind == "gm_static":  # N(mu_k, s * sigma I)
                want = p.mu[comp] + math.sqrt(s * 0.15) * eps
            else:  # N(mu_k, s * A_k A_k^T)
                want = p.mu[comp] + math.sqrt(s) * torch.einsum("nij,nj->ni", p.A[comp], eps)
            assert torch.allclose(p(eps, comp, s), want, rtol=0, atol=1e-15), (kind, s)


def test_sample_sigma_reaches_generated_samples(tmp_path):
    """sample_sigma = 0: every sample of Gaussian k is G(mu_k), so at most K distinct rows."""
    tr = _trainer(tmp_path, model="gmgan", prior="gm_static", sample_sigma=0.0)
    out = generate_images(tr.G_raw, {**tr.cfg, "dataset": "synthetic"}, 200, 0, tr.device)
    assert torch.unique(out, dim=0).shape[0] <= 4
    tr.cfg["sample_sigma"] = 1.0
    assert torch.unique(generate_images(tr.G_raw, tr.cfg, 200, 0, tr.device), dim=0).shape[0] > 100


def test_gmgan_needs_a_mixture_prior():
    with pytest.raises(ConfigError, match="prior=gm_static"):
        load_config("synthetic", {"model": "gmgan"})


class _ClassOfGaussian(nn.Module):
    """A generator net mapping z near mu_k to real rows of class perm[k] (a 'perfect' GM-GAN)."""

    def __init__(self, mu, rows_by_class, perm):
        super().__init__()
        self.mu, self.rows, self.perm = mu, rows_by_class, perm

    def forward(self, z):
        k = torch.cdist(z, self.mu).argmin(1)
        pick = torch.randint(0, self.rows.shape[1], (z.shape[0],))
        return self.rows[self.perm[k], pick]


def test_algorithm_2_recovers_the_classes_of_a_perfect_generator(tmp_path):
    tr = _trainer(tmp_path, **{**TINY, "n_train": 400}, model="gmgan", prior="gm_static", gm_sigma=1e-6)
    x, y = tr.data.dataset.x, tr.data.labels
    per = min(int((y == c).sum()) for c in range(4))
    rows = torch.stack([x[y == c][:per] for c in range(4)])
    tr.G_raw.net = _ClassOfGaussian(tr.G_raw.prior.mu, rows, torch.tensor([2, 0, 3, 1]))
    xs, ks = gmgan.samples_per_gaussian(tr.G_raw, tr.cfg, 64, 0, tr.device)
    assert xs.shape == (4 * 64, 100) and torch.equal(ks, torch.arange(4).repeat_interleave(64))
    order = torch.arange(len(tr.data))
    c = gmgan.gmgan_clustering(tr, order)
    assert c["acc"] > 0.95 and c["nmi"] > 0.85 and c["clusters_used"] == 4
    assert "Algorithm 2" in c["method"]


@pytest.mark.parametrize("dataset", ["synthetic", "mnist5k"])
def test_gmgan_trains_a_few_steps(tmp_path, dataset):
    cfg = load_config("synthetic", {**TINY, "model": "gmgan", "prior": "gm_dynamic", "max_steps": 2, "dataset": dataset,
                                    "n_train": 96, "eval_samples": 64, "interpolation": dataset != "synthetic"})  # fmt: skip
    s = train(cfg, str(tmp_path))
    assert s["status"] == "max_steps" and s["steps"] == 2
    assert 0.0 <= s["cluster_acc"] <= 1.0 and 0.0 <= s["cluster_nmi"] <= 1.0
    assert 1 <= s["cluster_clusters_used"] <= cfg["k"] and "Algorithm 2" in s["cluster_method"]
