"""The KM-GAN trainer's data loop: the Trainer sets up data, networks, optimizers and center
sets, runs the epochs (batches in a seeded order, resumable mid-epoch), logs, checkpoints,
and evaluates at the end (README, The KM-GAN trainer).

Where the rest lives: one iteration of each model in ``iterations`` (its optimizer steps in
``steps``), center seeding and updates in ``centers``, the metrics log and per-epoch figures
in ``records``, the checkpoint's contents in ``checkpoint``, end-of-run metrics in
``evaluate``.

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
from kmgan_ext import _optional

from . import centers as cset
from . import checkpoint as ckpt
from . import data as data_mod
from . import dist as dist_mod
from . import records
from .config import DEFAULTS, check, coerce, load_config, resume_overrides
from .iterations import ITERATIONS
from .models import build_networks
from .steps import StopTraining, frozen_bn

SAMPLE_GRID = 64
CENTER_MODELS = ("kmgan", "generalized", "reduced")  # the models with center sets and a center step


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
    """One training run in ``out_dir`` (fresh, or ``resume`` from its newest intact checkpoint):
    ``run()`` seeds the centers, trains, checkpoints and evaluates."""

    def __init__(self, cfg: dict, out_dir: str, *, resume: bool = False):
        # fail before training, not at the first figure or metric an hour in
        _optional.require_extra("train", "the KM-GAN trainer", ignore=("tqdm",))
        self.cfg = cfg
        self.out = os.path.abspath(out_dir)
        self.info = dist_mod.setup(cfg["device"], cfg["dist_timeout"])
        self.device = self.info.device
        self.world = self.info.world_size
        self._check_engineering_options()
        self.data = data_mod.load_train_data(cfg)
        self.arch, self.image_size = data_mod.resolve_arch(cfg)
        torch.manual_seed(cfg["seed"])  # parameter init: identical on every rank
        # slcGAN has a third network, its clustering network C (self.clusterer)
        self.opt_cluster = None
        self.G_raw, self.D_raw, self.clusterer = build_networks(cfg, self.arch, self.model_shape())
        if self.clusterer is not None:
            self.clusterer.to(self.device)
        self.G_raw.to(self.device)
        self.D_raw.to(self.device)
        # Fused Adam: the same update, one kernel; 3x faster than the per-tensor loop for
        # Table 2's tiny networks on CPU (0.57 vs 1.78 ms per step, measured here).
        adam = dict(lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), fused=True)
        self.opt_D = torch.optim.Adam(self.D_raw.parameters(), **adam)
        self.opt_G = torch.optim.Adam(self.G_raw.parameters(), **adam)
        if self.clusterer is not None:
            self.opt_cluster = torch.optim.Adam(self.clusterer.parameters(), **adam)
        # The KM-GAN loss block (labels, Eq. 4-7) with this run's options.
        lam = cfg["lambda"] if cfg["model"] == "generalized" else 0.0
        self.losses = km.KMGANLosses(cfg["distance_reduction"], lam, cfg["pairwise_reduction"], cfg["backend"])
        self.opt_C = None
        if cfg["model"] in CENTER_MODELS and cfg["center_optimizer"] == "separate":
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
            ckpt.load_state(self, ckpt.newest_good(os.path.join(self.out, "checkpoints")))
        self.D, self.G = self._wrap(self.D_raw), self._wrap(self.G_raw)
        self.C = self._wrap(self.clusterer) if self.clusterer is not None else None
        self._stop_requested = False
        self.writer = None

    # ------------------------------------------------------------------ setup helpers
    def model_shape(self) -> tuple[int, ...]:
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
        if cfg["gp_weight"] > 0 and self.world > 1:
            # the penalty's double backward through DistributedDataParallel is not supported
            raise ValueError("gp_weight > 0 runs on one process only (not under torchrun/DDP)")
        if cfg["gp_weight"] > 0 and cfg["model"] not in ("kmgan", "generalized", "dcgan"):
            raise ValueError(f"gp_weight applies to kmgan, generalized and dcgan, not {cfg['model']}")

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.compile:
            module = torch.compile(module)
        return module

    def autocast(self):
        if self.amp:
            # the device's type, not "cuda": amp is only switched on on a GPU (see
            # _check_engineering_options), but tests run the same autocast regions on CPU
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ features over sets
    def _input(self, batch: Tensor) -> Tensor:
        return data_mod.to_model_input(batch, self.cfg, self.device)

    def feature_order(self, n: int, seed_offset: int) -> Tensor:
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

    # ------------------------------------------------------------------ one iteration
    def iteration(self, batch: Tensor) -> dict:
        """One iteration of the configured model on a batch from the loader."""
        return ITERATIONS[self.cfg["model"]](self, self._input(batch))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> str:
        with dist_mod.phase(self.info, "checkpointing", self.step):
            state = ckpt.state(self)  # collective (all ranks gather their RNG states)
            path = ckpt.checkpoint_path(os.path.join(self.out, "checkpoints"), self.step)
            if self.info.main:
                ckpt.save_rotating(state, os.path.dirname(path), self.step, self.cfg["keep_checkpoints"])
            dist_mod.barrier(self.info)
        return path

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

    def _loop(self, hook=None, on_epoch=None) -> str:
        cfg = self.cfg
        max_steps = cfg["max_steps"]
        while self.epoch < cfg["epochs"]:
            loader, per_epoch = self._loader(self.epoch, self.batch_in_epoch)
            bar = records.progress_bar(self, per_epoch, f"{cfg['model']} epoch {self.epoch + 1}/{cfg['epochs']}")
            t_window, n_window = 0.0, 0
            try:
                for batch in loader:
                    if max_steps and self.step >= max_steps:
                        return "max_steps"
                    t0 = time.perf_counter()
                    with dist_mod.phase(self.info, "the training iteration", self.step + 1):
                        out = self.iteration(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    dt = time.perf_counter() - t0
                    self.seconds += dt
                    t_window, n_window = t_window + dt, n_window + 1
                    self.last = out
                    bar.update(1)
                    bar.set_postfix({k: out[k] for k in ("L_D", "L_G", "L_center") if k in out})
                    if cfg["log_every"] and self.step % cfg["log_every"] == 0:
                        with dist_mod.phase(self.info, "logging (center rank check)", self.step):
                            records.write_log(self, records.log_record(self, out, t_window, n_window))
                        t_window, n_window = 0.0, 0
                    if hook is not None:
                        hook(self)
                    with dist_mod.phase(self.info, "the stop check after the iteration", self.step):
                        stop = dist_mod.any_rank(self._stop_requested, self.info)
                    if stop:
                        return "interrupted"
            finally:
                bar.close()
            self.epoch += 1
            self.batch_in_epoch = 0
            records.epoch_figure(self)
            if on_epoch is not None:
                on_epoch(self)
            if cfg["checkpoint_every"] and self.epoch % cfg["checkpoint_every"] == 0 and self.epoch < cfg["epochs"]:
                self.save_checkpoint()
        if max_steps and self.step >= max_steps:
            return "max_steps"
        return "finished"

    def run(self, hook=None, on_epoch=None) -> dict:
        """Train (seeding the centers first unless resumed), checkpoint, evaluate; the
        summary dict (also written as summary.json by rank 0). ``hook(tr)`` runs after every
        iteration, ``on_epoch(tr)`` after every finished epoch (e.g. to score features)."""
        os.makedirs(self.out, exist_ok=True)
        records.start(self)
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
                    with dist_mod.phase(self.info, "center seeding"):
                        cset.seed(self)
                    self.seed_seconds = time.perf_counter() - t0
                try:
                    self.status = self._loop(hook, on_epoch)
                except StopTraining as e:
                    self.status = f"stopped: {e}"
                except KeyboardInterrupt:
                    self.status = "interrupted (mid-iteration)"
                if self.C_real is not None:
                    with dist_mod.phase(self.info, "the final center rank check", self.step):
                        records.update_rank_diff(self)
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


# What a run writes into its folder: a fresh run refuses a folder holding any of them
# (unless overwrite=True, which deletes them first so that nothing of the old run mixes in).
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard", "samples", "figures")


class RunExistsError(ValueError):
    """``out_dir`` already holds a run: resume it, or ask for an overwrite."""


def prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse (RunExistsError) to start a fresh run over an existing one unless ``overwrite``;
    with ``overwrite``, remove the old run's files first."""
    if not os.path.isdir(out_dir):
        return
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]
    if not present:
        return
    if not overwrite:
        raise RunExistsError(
            f"--out {out_dir} already holds a run ({', '.join(present)}): continue it with --resume {out_dir}, "
            f"start over with --overwrite (deletes that run), or choose another --out"
        )
    import shutil

    for name in present:
        path = os.path.join(out_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def train(
    config: str | dict, out_dir: str, overrides: dict | None = None, hook=None, on_epoch=None, overwrite: bool = False
) -> dict:
    """Train from a config (name, JSON path or resolved dict) into ``out_dir``, a new folder
    (or one holding no run; ``overwrite=True`` deletes the run there first)."""
    if isinstance(config, dict):
        cfg = {key: coerce(key, v) for key, v in config.items() if key != "config"}
        cfg = {**DEFAULTS, **cfg, **(overrides or {}), "config": config.get("config", "dict")}
        check(cfg)
    else:
        cfg = load_config(config, overrides)
    if dist_mod.rank_from_env() == 0:
        prepare_out_dir(os.path.abspath(out_dir), overwrite)
    return Trainer(cfg, out_dir).run(hook, on_epoch)


def resume(out_dir: str, overrides: dict | None = None, hook=None, on_epoch=None) -> dict:
    """Continue the run in ``out_dir`` from its newest intact checkpoint (optionally with more
    epochs). ckpt.CheckpointError when there is no run or no usable checkpoint there."""
    path = os.path.join(out_dir, "config.json")
    if not os.path.isfile(path):
        raise ckpt.CheckpointError(f"--resume {out_dir}: no run there (no config.json)")
    with open(path) as f:
        saved = json.load(f)
    cfg = resume_overrides(saved, overrides or {})
    ckpt.newest_good(os.path.join(out_dir, "checkpoints"), say=lambda m: None)  # fail before any setup
    return Trainer(cfg, out_dir, resume=True).run(hook, on_epoch)
