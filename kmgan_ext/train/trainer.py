"""The KM-GAN training loop (Algorithm 1, DESIGN.md section 5), its variants and baseline.

Per iteration of KM-GAN (``kmgan``, ``generalized``):

1. one forward of D on x and on G(z): features f_r, f_f, and their labels against the
   current centers (real features -> C; fake features -> C for Eq. 5/6 and -> Ĉ for Eq. 4);
2. D step on L_D (Eq. 5, + lambda (L_intra - L_inter) for Eq. 7), then weight clipping;
3. G step on L_G (Eq. 6, + lambda L_inter) through the updated D;
4. joint D+G step on L_center (Eq. 4) while d_round allows it, then weight clipping;
5. both center updates (mini-batch k-means) on features recomputed under the updated
   parameters (or the step-1 features with ``reuse_features``).

``reduced`` follows Algorithm 2 (centers in pixel space; center step, D step, G step) and
``dcgan`` is the usual non-saturating GAN on the same networks (D plus a linear head).

Feature passes outside the loss (center updates, seeding, evaluation) run D and G in train
mode -- batch statistics, as the features the losses see -- with the BN running statistics
frozen, so they change nothing a resume has to restore.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
import warnings

import torch
from torch import Tensor, nn

import kmgan_ext as km

from . import centers as cset
from . import checkpoint as ckpt
from . import data as data_mod
from . import dist as dist_mod
from . import figures, losses, metrics
from .config import DEFAULTS, check, coerce, load_config, resume_overrides
from .models import build_models

KM_MODELS = ("kmgan", "generalized")
SAMPLE_GRID = 64


class StopTraining(Exception):
    """A clean stop inside an iteration (non-finite loss): checkpoint, summary, exit."""


@contextlib.contextmanager
def frozen_bn(*modules: nn.Module):
    """Batch-norm layers use batch statistics but leave their running statistics untouched
    (momentum 0: running = 1 * running + 0 * batch, bitwise the same)."""
    saved = []
    for m in modules:
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                saved.append((mod, mod.momentum, mod.num_batches_tracked.clone()))
                mod.momentum = 0.0
    try:
        yield
    finally:
        for mod, mom, nbt in saved:
            mod.momentum = mom
            mod.num_batches_tracked.copy_(nbt)


@contextlib.contextmanager
def deterministic_mode(enabled: bool):
    prev = torch.are_deterministic_algorithms_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)
        torch.backends.cudnn.benchmark = prev_bench


def _balanced_chunks(index: Tensor, rows: int) -> list[list[int]]:
    """index split into nearly equal chunks of at most ``rows`` (never a 1-row chunk when
    avoidable: batch norm in train mode needs 2 rows)."""
    n = index.numel()
    parts = max(1, math.ceil(n / max(2, rows)))
    return [c.tolist() for c in torch.tensor_split(index, parts) if c.numel()]


class Trainer:
    def __init__(self, cfg: dict, out_dir: str, *, resume: bool = False):
        self.cfg = cfg
        self.out = os.path.abspath(out_dir)
        self.info = dist_mod.setup(cfg["device"])
        self.device = self.info.device
        self.world = self.info.world_size
        self._check_engineering_options()
        self.data = data_mod.load_train_data(cfg)
        self.arch, self.image_size = data_mod.resolve_arch(cfg)
        torch.manual_seed(cfg["seed"])  # parameter init: identical on every rank
        self.G_raw, self.D_raw = build_models(cfg, self.arch, self._model_shape(), head=cfg["model"] == "dcgan")
        self.G_raw.to(self.device)
        self.D_raw.to(self.device)
        # Fused Adam: the same update, one kernel; 3x faster than the per-tensor loop for
        # Table 2's tiny networks on CPU (0.57 vs 1.78 ms per step, measured here).
        adam = dict(lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), fused=True)
        self.opt_D = torch.optim.Adam(self.D_raw.parameters(), **adam)
        self.opt_G = torch.optim.Adam(self.G_raw.parameters(), **adam)
        # The KM-GAN loss block (labels, Eq. 4-7) with this run's options.
        lam = cfg["lambda"] if cfg["model"] == "generalized" else 0.0
        self.losses = km.KMGANLosses(cfg["distance_reduction"], lam, cfg["pairwise_reduction"], cfg["backend"])
        self.opt_C = None
        if cfg["model"] != "dcgan" and cfg["center_optimizer"] == "separate":
            params = list(self.D_raw.parameters()) + list(self.G_raw.parameters())
            self.opt_C = torch.optim.Adam(params, **adam)
        # Center sets: real/fake feature centers (KM-GAN) or pixel centers (reduced).
        self.C_real = self.n_real = self.C_fake = self.n_fake = None
        self.step = self.epoch = self.batch_in_epoch = 0
        self.seconds = 0.0
        self.rank_diff = 0.0
        self.status = "running"
        self.last: dict = {}
        self.z_gen = torch.Generator(device=self.device).manual_seed(cfg["seed"] * 1_000_003 + 7 * self.info.rank + 1)
        g = torch.Generator(device=self.device).manual_seed(cfg["seed"] + 29)
        self.fixed_noise = self.G_raw.prior.sample_noise(SAMPLE_GRID, g, self.device)
        self.resumed = False
        if resume:
            self._load(os.path.join(self.out, "checkpoints", "last.pt"))
        self.D, self.G = self._wrap(self.D_raw), self._wrap(self.G_raw)
        self._stop_requested = False
        self.writer = None

    # ------------------------------------------------------------------ setup helpers
    def _model_shape(self) -> tuple[int, ...]:
        if not self.data.is_image:
            return self.data.sample_shape
        return (self.data.sample_shape[0], self.image_size, self.image_size)

    def _check_engineering_options(self) -> None:
        cfg = self.cfg
        on_gpu = self.device.type == "cuda"
        self.amp = bool(cfg["amp"]) and on_gpu
        self.compile = bool(cfg["compile"]) and on_gpu
        if cfg["amp"] and not on_gpu:
            warnings.warn("amp=true needs a GPU: ignored on CPU (training in float32)", stacklevel=2)
        if cfg["compile"] and not on_gpu:
            warnings.warn("compile=true is used on GPU only: ignored on CPU", stacklevel=2)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.compile:
            module = torch.compile(module)
        return module

    def autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ features over sets
    def _input(self, batch: Tensor) -> Tensor:
        return data_mod.to_model_input(batch, self.cfg, self.device)

    def _order(self, n: int, seed_offset: int) -> Tensor:
        # Chunks in a fixed random order: batch statistics of a chunk must not depend on how
        # the set is sorted (the synthetic set is sorted by class).
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg["seed"] + seed_offset))

    def dataset_features(self, fn, order: Tensor) -> Tensor:
        """fn over the training rows ``order`` in chunks (km.extract_features), no grad."""
        chunks = _balanced_chunks(order, self.cfg["feature_batch"])
        loader = torch.utils.data.DataLoader(self.data.dataset, batch_size=None, sampler=chunks)

        def run(batch: Tensor) -> Tensor:
            with self.autocast():
                return fn(self._input(batch)).float()

        with torch.no_grad(), frozen_bn(self.D_raw, self.G_raw):
            return km.extract_features(
                run, loader, batch_size=self.cfg["feature_batch"], device=self.device, out_device=None, progress=False
            )

    def generated_features(self, n: int, gen: torch.Generator) -> Tensor:
        """D(G(z)) of n generated samples, z drawn from ``gen`` (prior applied up front)."""
        eps, comp = self.G_raw.prior.sample_noise(n, gen, self.device)
        with torch.no_grad():
            z = self.G_raw.prior(eps, comp)
        chunks = _balanced_chunks(torch.arange(n), self.cfg["feature_batch"])
        zs = [z[torch.tensor(c, device=z.device)] for c in chunks]

        def run(zb: Tensor) -> Tensor:
            with self.autocast():
                return self.D_raw.features(self.G_raw.net(zb.to(self.device))).float()

        with torch.no_grad(), frozen_bn(self.D_raw, self.G_raw):
            return km.extract_features(
                run, zs, batch_size=self.cfg["feature_batch"], device=self.device, out_device=None, progress=False
            )

    # ------------------------------------------------------------------ center seeding
    def _seed_centers(self) -> None:
        """Real centers by k-means++ over D(X) of the whole training set, fake centers over
        D(G(z)) of a generated pool (``fake_pool``); pixel centers over X for ``reduced``.
        Rank 0 seeds, every rank receives the same centers."""
        cfg, k = self.cfg, self.cfg["k"]
        if cfg["model"] == "dcgan":
            return
        n = len(self.data)
        if cfg["model"] == "reduced":
            dim = int(torch.tensor(self._model_shape()).prod())
            c = torch.zeros(k, dim, device=self.device)
            if self.info.main:
                pixels = self.dataset_features(lambda x: x.flatten(1), torch.arange(n))
                c = cset.kmeans_pp(pixels, k, cfg["seed"]).to(self.device)
            self.C_real = cset.broadcast_(c.contiguous(), self.world)
            self.n_real = torch.zeros(k, dtype=torch.int64, device=self.device)
            return
        fdim = self.D_raw.feature_dim
        c_real = torch.zeros(k, fdim, device=self.device)
        c_fake = torch.zeros(k, fdim, device=self.device)
        if self.info.main:
            feats = self.dataset_features(self.D_raw.features, self._order(n, 11))
            c_real = cset.kmeans_pp(feats, k, cfg["seed"]).to(self.device)
            pool = self.generated_features(max(k, cfg["fake_pool"]), torch.Generator(device=self.device).manual_seed(cfg["seed"] + 17))
            c_fake = cset.kmeans_pp(pool, k, cfg["seed"] + 1).to(self.device)
        self.C_real = cset.broadcast_(c_real.contiguous(), self.world)
        self.C_fake = cset.broadcast_(c_fake.contiguous(), self.world)
        self.n_real = torch.zeros(k, dtype=torch.int64, device=self.device)
        self.n_fake = torch.zeros(k, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ one iteration
    def _check(self, name: str, value: Tensor) -> None:
        bad = not bool(torch.isfinite(value.detach()).all())
        if dist_mod.any_rank(bad, self.info):
            raise StopTraining(f"non-finite {name} at step {self.step}")

    def _clip(self) -> None:
        c = self.cfg["clip"]
        if c > 0 and self.cfg["model"] != "dcgan":
            with torch.no_grad():
                for p in self.D_raw.parameters():
                    p.clamp_(-c, c)

    def _center_step(self, loss: Tensor) -> None:
        """One joint D+G Adam step on ``loss`` (its own Adam, or the D and G ones)."""
        if self.opt_C is not None:
            self.opt_C.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_C.step()
        else:
            self.opt_D.zero_grad(set_to_none=True)
            self.opt_G.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_D.step()
            self.opt_G.step()
        self._clip()

    def _center_active_by_steps(self) -> bool:
        return self.cfg["d_round_mode"] == "steps" and self.step < self.cfg["d_round"]

    def _floor_active(self, value: Tensor) -> bool:
        v = value.detach().double().reshape(1).clone()
        if self.world > 1:
            torch.distributed.all_reduce(v)
            v /= self.world
        return float(v.item()) >= self.cfg["d_round"]

    def _kmgan_iteration(self, x: Tensor) -> dict:
        cfg = self.cfg
        eps, comp = self.G_raw.prior.sample_noise(x.shape[0], self.z_gen, self.device)
        with self.autocast():
            fake = self.G(eps, comp)
            f_r = self.D(x).float()
            f_f = self.D(fake.detach()).float()
        terms = self.losses(f_r, f_f, self.C_real, self.C_fake)
        l_r, l_g, l_h = terms.labels_real, terms.labels_fake, terms.labels_fake_hat
        # D step (Eq. 5 / Eq. 7)
        loss_d = terms.loss_d
        parts = {} if terms.l_intra is None else {"L_intra": terms.l_intra.detach(), "L_inter": terms.l_inter.detach()}
        self._check("L_D", loss_d)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()
        self._clip()
        # G step (Eq. 6 / Eq. 7) through the updated D, labels of the first pass
        with self.autocast():
            f_f2 = self.D(fake).float()
        loss_g = self.losses.generator_loss(f_f2, l_g, self.C_real, f_r)
        self._check("L_G", loss_g)
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()
        # Center-loss step (Eq. 4); before it, its value on the first pass's features
        if cfg["d_round_mode"] == "steps":
            active = self._center_active_by_steps()
        else:
            active = self._floor_active(terms.loss_center.detach())
        if active:
            with self.autocast():
                fr3 = self.D(x).float()
                ff3 = self.D(self.G(eps, comp)).float()
            loss_c = self.losses.center_loss(fr3, l_r, self.C_real, ff3, l_h, self.C_fake)
            self._check("L_center", loss_c)
            self._center_step(loss_c)
        else:
            loss_c = terms.loss_center.detach()
        # Center updates
        if cfg["reuse_features"]:
            xr, xf = f_r.detach(), f_f.detach()
        else:
            with torch.no_grad(), frozen_bn(self.D_raw, self.G_raw), self.autocast():
                xr = self.D_raw.features(x).float()
                xf = self.D_raw.features(self.G_raw(eps, comp)).float()
        cset.update_(self.C_real, self.n_real, xr, cfg, self.world)
        cset.update_(self.C_fake, self.n_fake, xf, cfg, self.world)
        out = {"L_D": loss_d.detach(), "L_G": loss_g.detach(), "L_center": loss_c.detach(), "center_step": active}
        out.update(parts)
        out["labels_real"], out["labels_fake"] = l_r, l_h
        return out

    def _reduced_iteration(self, x: Tensor) -> dict:
        """Algorithm 2: k-means in pixel space; center step, D step, G step, center update."""
        cfg = self.cfg
        eps, comp = self.G_raw.prior.sample_noise(x.shape[0], self.z_gen, self.device)
        center_imgs = self.C_real.view(-1, *self._model_shape())
        with self.autocast():
            fake = self.G(eps, comp)
        with torch.no_grad():
            l_r, _ = km.assign(x.flatten(1).float(), self.C_real, backend=cfg["backend"])
            l_g, _ = km.assign(fake.detach().flatten(1).float(), self.C_real, backend=cfg["backend"])
        if cfg["d_round_mode"] == "steps":
            active = self._center_active_by_steps()
        else:
            with torch.no_grad(), frozen_bn(self.D_raw), self.autocast():
                fc0 = self.D_raw.features(center_imgs).float()
            active = self._floor_active(losses.reduced_center_loss(fc0, l_r, l_g))
        if active:
            with self.autocast():
                fc = self.D(center_imgs).float()
            loss_c = losses.reduced_center_loss(fc, l_r, l_g)
            self._check("L_center", loss_c)
            self._center_step(loss_c)
        else:
            with torch.no_grad(), frozen_bn(self.D_raw), self.autocast():
                loss_c = losses.reduced_center_loss(self.D_raw.features(center_imgs).float(), l_r, l_g)
        with self.autocast():
            fc = self.D(center_imgs).float()
            f_r = self.D(x).float()
        loss_d = losses.reduced_pull(f_r, l_r, fc, cfg)
        self._check("L_D", loss_d)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()
        self._clip()
        with torch.no_grad(), frozen_bn(self.D_raw), self.autocast():
            fc_g = self.D_raw.features(center_imgs).float()
        with self.autocast():
            f_f = self.D(fake).float()
        loss_g = losses.reduced_pull(f_f, l_g, fc_g, cfg)
        self._check("L_G", loss_g)
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()
        cset.update_(self.C_real, self.n_real, x.flatten(1).float(), cfg, self.world)
        return {
            "L_D": loss_d.detach(),
            "L_G": loss_g.detach(),
            "L_center": loss_c.detach(),
            "center_step": active,
            "labels_real": l_r,
            "labels_fake": l_g,
        }

    def _dcgan_iteration(self, x: Tensor) -> dict:
        eps, comp = self.G_raw.prior.sample_noise(x.shape[0], self.z_gen, self.device)
        with self.autocast():
            fake = self.G(eps, comp)
            logit_r = self.D(x)
            logit_f = self.D(fake.detach())
        loss_d = losses.dcgan_d_loss(logit_r, logit_f)
        self._check("L_D", loss_d)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()
        with self.autocast():
            logit_f2 = self.D(fake)
        loss_g = losses.dcgan_g_loss(logit_f2)
        self._check("L_G", loss_g)
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()
        return {"L_D": loss_d.detach(), "L_G": loss_g.detach()}

    def iteration(self, batch: Tensor) -> dict:
        x = self._input(batch)
        model = self.cfg["model"]
        if model in KM_MODELS:
            return self._kmgan_iteration(x)
        if model == "reduced":
            return self._reduced_iteration(x)
        return self._dcgan_iteration(x)

    # ------------------------------------------------------------------ logging
    def _log_record(self, out: dict, window_seconds: float, window_steps: int) -> dict:
        rec = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}
        for key in ("L_D", "L_G", "L_center", "L_intra", "L_inter"):
            if key in out:
                rec[key] = float(out[key])
        if "center_step" in out:
            rec["center_step"] = bool(out["center_step"])
        if self.C_real is not None:
            k = self.C_real.shape[0]
            rec["real_counts_min"] = int(self.n_real.min())
            rec["real_counts_max"] = int(self.n_real.max())
            rec["batch_clusters_real"] = int(torch.unique(out["labels_real"]).numel())
            rec["batch_clusters_fake"] = int(torch.unique(out["labels_fake"]).numel())
            if k > 1:
                rec["real_center_spread"] = float(torch.pdist(self.C_real.double()).mean())
            if self.C_fake is not None:
                rec["center_sum_l1_gap"] = float((self.C_real.sum(0) - self.C_fake.sum(0)).abs().sum())
            tensors = [self.C_real, self.n_real] + ([self.C_fake, self.n_fake] if self.C_fake is not None else [])
            diff = cset.rank_max_abs_diff(tensors, self.world)
            self.rank_diff = max(self.rank_diff, diff)
            rec["center_rank_max_abs_diff"] = diff
        rec["sec_per_step"] = window_seconds / max(1, window_steps)
        rec["seconds"] = self.seconds
        return rec

    def _write_log(self, rec: dict) -> None:
        if not self.info.main:
            return
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for key, v in rec.items():
                if key not in ("step", "epoch", "batch_in_epoch") and isinstance(v, (int, float)):
                    self.writer.add_scalar(key, float(v), self.step)

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def _epoch_figure(self) -> str | None:
        if not self.info.main or not self.cfg["sample_every"] or self.epoch % self.cfg["sample_every"]:
            return None
        path = os.path.join(self.out, "samples", f"epoch_{self.epoch:04d}.png")
        if not self.data.is_image:
            # Vectors cannot be shown as images: the epoch's figure is Fig. 2's panel, D's
            # features of the training set colored by the hidden label.
            order = self._order(len(self.data), 11)
            feats = self.dataset_features(self.D_raw.features, order)
            labels = self.data.labels[order]
            title = f"D features, epoch {self.epoch}"
            if labels is not None:
                # Fig. 2 shows the features "in the training process": score them per epoch.
                fc = metrics.feature_clustering(feats, labels, int(labels.max()) + 1, self.cfg["seed"])
                self._write_log({"step": self.step, "epoch": self.epoch, "feature_acc": fc["acc"], "feature_nmi": fc["nmi"]})
                title += f": k-means acc {fc['acc']:.3f}, NMI {fc['nmi']:.3f}"
            figures.feature_scatter(
                [(title, metrics.pca2(feats), labels)], path,
                f"{self.cfg['model']}: discriminator features (PCA if d > 2)",
            )  # fmt: skip
            return path
        self.G_raw.eval()
        try:
            imgs = data_mod.from_model_output(self.G_raw(*self.fixed_noise), self.cfg)
        finally:
            self.G_raw.train()
        figures.save_grid(imgs, path, nrow=8)
        if self.writer is not None:
            from torchvision.utils import make_grid

            self.writer.add_image("samples", make_grid(imgs.cpu(), nrow=8), self.step)
        return path

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        per_rank = {"z_gen": self.z_gen.get_state(), "rng": ckpt.rng_state()}
        return {
            "format": 1,
            "config": self.cfg,
            "G": self.G_raw.state_dict(),
            "D": self.D_raw.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_C": self.opt_C.state_dict() if self.opt_C is not None else None,
            "centers": {
                "real": self.C_real,
                "real_counts": self.n_real,
                "fake": self.C_fake,
                "fake_counts": self.n_fake,
            },
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seconds": self.seconds,
            "center_rank_max_abs_diff": self.rank_diff,
            "status": self.status,
            "fixed_noise": [t.cpu() for t in self.fixed_noise],
            "rank_states": dist_mod.all_gather_object(per_rank, self.info),
            "world_size": self.world,
        }

    def save_checkpoint(self) -> str:
        state = self._state()  # collective (all ranks gather their RNG states)
        path = os.path.join(self.out, "checkpoints", "last.pt")
        if self.info.main:
            ckpt.save_atomic(state, path)
        dist_mod.barrier(self.info)
        return path

    def _load(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        state = ckpt.load(path, map_location="cpu")
        if state["world_size"] != self.world:
            raise ValueError(
                f"--resume: the checkpoint was written by {state['world_size']} processes, this run has "
                f"{self.world}; an exact resume needs the same number"
            )
        self.G_raw.load_state_dict(state["G"])
        self.D_raw.load_state_dict(state["D"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.opt_G.load_state_dict(state["opt_G"])
        if self.opt_C is not None:
            self.opt_C.load_state_dict(state["opt_C"])
        c = state["centers"]

        def dev(t):
            return None if t is None else t.to(self.device)

        self.C_real, self.n_real = dev(c["real"]), dev(c["real_counts"])
        self.C_fake, self.n_fake = dev(c["fake"]), dev(c["fake_counts"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.seconds = state["seconds"]
        self.rank_diff = state["center_rank_max_abs_diff"]
        self.fixed_noise = tuple(t.to(self.device) for t in state["fixed_noise"])
        mine = state["rank_states"][self.info.rank]
        self.z_gen.set_state(mine["z_gen"])
        ckpt.set_rng_state(mine["rng"])
        self.resumed = True

    # ------------------------------------------------------------------ the loop
    @contextlib.contextmanager
    def _sigint(self):
        """First Ctrl-C: finish the iteration, checkpoint, stop. Second: KeyboardInterrupt."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        prev = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, prev)

    def _loader(self, epoch: int, skip: int):
        sampler = torch.utils.data.DistributedSampler(
            self.data.dataset,
            num_replicas=self.world,
            rank=self.info.rank,
            shuffle=True,
            seed=self.cfg["seed"],
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        batches = list(torch.utils.data.BatchSampler(sampler, self.cfg["batch_size"], drop_last=True))
        if not batches:
            raise ValueError(
                f"{len(self.data)} training rows over {self.world} process(es) give no full batch of "
                f"{self.cfg['batch_size']}"
            )
        return (
            torch.utils.data.DataLoader(
                self.data.dataset,
                batch_size=None,
                sampler=batches[skip:],
                num_workers=self.cfg["num_workers"],
                generator=torch.Generator().manual_seed(self.cfg["seed"] * 1000 + epoch),
            ),
            len(batches),
        )

    def _loop(self, hook=None) -> str:
        cfg = self.cfg
        max_steps = cfg["max_steps"]
        while self.epoch < cfg["epochs"]:
            loader, per_epoch = self._loader(self.epoch, self.batch_in_epoch)
            bar = None
            if self.info.main and cfg["progress"]:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=per_epoch, initial=self.batch_in_epoch, desc=f"{cfg['model']} epoch {self.epoch + 1}/{cfg['epochs']}",
                    leave=False, dynamic_ncols=True,
                )  # fmt: skip
            t_window, n_window = 0.0, 0
            try:
                for batch in loader:
                    if max_steps and self.step >= max_steps:
                        return "max_steps"
                    t0 = time.perf_counter()
                    out = self.iteration(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    dt = time.perf_counter() - t0
                    self.seconds += dt
                    t_window, n_window = t_window + dt, n_window + 1
                    self.last = out
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{float(out[k]):.3g}" for k in ("L_D", "L_G", "L_center") if k in out})
                    if cfg["log_every"] and self.step % cfg["log_every"] == 0:
                        self._write_log(self._log_record(out, t_window, n_window))
                        t_window, n_window = 0.0, 0
                    if hook is not None:
                        hook(self)
                    if dist_mod.any_rank(self._stop_requested, self.info):
                        return "interrupted"
            finally:
                if bar is not None:
                    bar.close()
            self.epoch += 1
            self.batch_in_epoch = 0
            self._epoch_figure()
            if cfg["checkpoint_every"] and self.epoch % cfg["checkpoint_every"] == 0 and self.epoch < cfg["epochs"]:
                self.save_checkpoint()
        if max_steps and self.step >= max_steps:
            return "max_steps"
        return "finished"

    def run(self, hook=None) -> dict:
        """Train (seeding the centers first unless resumed), checkpoint, evaluate; the
        summary dict (also written as summary.json by rank 0)."""
        os.makedirs(self.out, exist_ok=True)
        if self.info.main:
            if not self.resumed and os.path.exists(os.path.join(self.out, "metrics.jsonl")):
                os.remove(os.path.join(self.out, "metrics.jsonl"))  # a fresh run starts a fresh log
            with open(os.path.join(self.out, "config.json"), "w") as f:
                json.dump(self.cfg, f, indent=2, sort_keys=True)
            if self.cfg["tensorboard"]:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(self.out, "tensorboard"))
        threads = torch.get_num_threads()
        limits = contextlib.nullcontext()
        if self.cfg["threads"]:
            from threadpoolctl import threadpool_limits

            torch.set_num_threads(self.cfg["threads"])
            # scikit-learn's KMeans (evaluation) as well: 2 OpenMP threads on a loaded 2-core
            # machine took 4.6-9.8 s for 10,000 x 2 rows, 1 thread 0.2 s.
            limits = threadpool_limits(limits=self.cfg["threads"])
        try:
            with limits, deterministic_mode(self.cfg["deterministic"]), self._sigint():
                if not self.resumed:
                    t0 = time.perf_counter()
                    self._seed_centers()
                    self.seed_seconds = time.perf_counter() - t0
                try:
                    self.status = self._loop(hook)
                except StopTraining as e:
                    self.status = f"stopped: {e}"
                except KeyboardInterrupt:
                    self.status = "interrupted (mid-iteration)"
                if self.C_real is not None:
                    tensors = [self.C_real, self.n_real] + ([self.C_fake, self.n_fake] if self.C_fake is not None else [])
                    self.rank_diff = max(self.rank_diff, cset.rank_max_abs_diff(tensors, self.world))
                ckpt_path = self.save_checkpoint()
                summary = None
                if self.info.main:
                    from .evaluate import evaluate

                    summary = evaluate(self, ckpt_path)
                    with open(os.path.join(self.out, "summary.json"), "w") as f:
                        json.dump(summary, f, indent=2)
        finally:
            torch.set_num_threads(threads)
            if self.writer is not None:
                self.writer.close()
            dist_mod.teardown(self.info)
        return summary


def train(config: str | dict, out_dir: str, overrides: dict | None = None, hook=None) -> dict:
    """Train from a config (name, JSON path or resolved dict) into ``out_dir``."""
    if isinstance(config, dict):
        cfg = {key: coerce(key, v) for key, v in config.items() if key != "config"}
        cfg = {**DEFAULTS, **cfg, **(overrides or {}), "config": config.get("config", "dict")}
        check(cfg)
    else:
        cfg = load_config(config, overrides)
    return Trainer(cfg, out_dir).run(hook)


def resume(out_dir: str, overrides: dict | None = None, hook=None) -> dict:
    """Continue the run in ``out_dir`` from checkpoints/last.pt (optionally with more epochs)."""
    with open(os.path.join(out_dir, "config.json")) as f:
        saved = json.load(f)
    cfg = resume_overrides(saved, overrides or {})
    return Trainer(cfg, out_dir, resume=True).run(hook)
