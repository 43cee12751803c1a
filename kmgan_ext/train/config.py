"""Trainer configuration: one flat set of typed keys, built-in configs per paper experiment,
the paper's sweeps (Tables 4, 5, 8) as overrides, and ``--set key=value`` parsing.

Every key has a default in ``DEFAULTS``; its type is the default's type. A built-in config or
a JSON file only overrides keys; an unknown key or a value of the wrong type/choice is a
``ConfigError`` that names the key and what is accepted.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

DEFAULTS: dict[str, Any] = {
    # what to train
    # kmgan (Algorithm 1), dcgan, reduced (Algorithm 2), generalized (Eq. 7); the two other
    # clustering GANs of the seed papers: gmgan (Ben-Yosef & Weinshall 2018, unsupervised,
    # gmgan.py) and slcgan (Noroozi 2020, slcgan.py)
    "model": "kmgan",
    "dataset": "synthetic",
    "data_root": "",  # "" = the dataset's default location (see data.py)
    "data_split": "all",  # "all" = train + test as the paper (Table 1: 70,000 MNIST images)
    "n_train": 0,  # 0 = every image; n > 0 = a seeded random subset of n (tests, quick runs)
    "image_size": 0,  # 0 = the architecture's size (28 DCGAN-MNIST, 64 Tables 3 and 7)
    "arch": "auto",  # auto = table2 | dcgan28 | table3 | table7 by dataset
    "feature_dim": 0,  # 0 = the architecture's (2 for Table 2, 100 otherwise)
    "z_dim": 100,
    # schedule
    "epochs": 24,
    "max_steps": 0,  # 0 = no limit; n > 0 stops after n iterations (tests, smoke runs)
    "seed": 0,
    "device": "auto",  # auto = cuda when available, else cpu
    "deterministic": False,
    "batch_size": 64,
    "lr": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    # KM-GAN
    "k": 10,
    "d_round": 10000,
    # How d_round is read (every built-in config uses "steps"; README, The KM-GAN trainer):
    # steps: the center-loss step runs for the first d_round iterations (0 = never);
    # floor: it runs whenever L_center >= d_round (0 = always).
    # Why steps: Eq. 4's L_center is an L1 norm of differences of sums of K sigmoid features,
    # at most K * feature_dim (1,000 for CIFAR-10's K = 10, d = 100), so the floors of Table 5
    # (5,000 to 30,000) would all be unreachable and every column would be the same run
    # (the center step never active) -- yet Table 5 reports four different outcomes. Read as
    # an iteration budget they order as the table does: 0 ("None") never pulls the centers
    # together and fails; 30,000 exceeds the ~22,500 iterations of 24 CIFAR-10 epochs, so the
    # pull never stops and fails too; 20,000 stops it shortly before the end and is best.
    # The synthetic experiment's "d_round = 0" then means no center-loss step at all; the
    # floor reading (0 = always) is kept as an option and both are measured by
    # `python -m kmgan_ext.train.reproduce synthetic`.
    "d_round_mode": "steps",
    "clip": 0.0,  # weight clipping box [-clip, clip] for D after each D update; 0 = none
    # WGAN-GP-style gradient penalty on D (beyond the paper: sections 4.4-4.5 name WGAN-GP as
    # compatible future work): gp_weight * E[(||grad_x D_critic(x_hat)||_2 - 1)^2] added to
    # L_D, x_hat on random lines between real and generated rows; 0 = off. See penalty.py
    # for the critic (KM-GAN: the distance of D(x_hat) to its nearest real center).
    "gp_weight": 0.0,
    # DCGAN's read-out: linear = a linear layer on D's top features -> one logit (default:
    # the usual DCGAN); none = the paper's literal "same structure" (Table 2 has no head):
    # the mean of D's sigmoid features is the probability that x is real.
    "dcgan_head": "linear",
    "lambda": 0.0,  # weight of Eq. 7's regularisers (generalized model)
    "pairwise_reduction": "sum",  # sum = Eq. 7 literally; mean = divided by the pair count
    "distance_reduction": "fro",  # ||.||_2 of Eq. 5/6: fro (paper) | mean | sq_sum
    "center_optimizer": "separate",  # the joint center-loss step: its own Adam, or "shared"
    "reuse_features": False,  # center updates from the first pass instead of a fresh one
    "fake_pool": 10000,  # generated samples whose features seed the fake centers
    "feature_batch": 1000,  # rows per chunk when extracting features over a whole set
    # latent prior (GM-GAN, Ben-Yosef & Weinshall 2018)
    "prior": "normal",  # normal | gm_static | gm_dynamic
    "gm_components": 0,  # 0 = k
    "gm_c": 0.1,  # means ~ U[-c, c]^d
    "gm_sigma": 0.15,  # covariance sigma * I (the GM-GAN paper's defaults c=0.1, sigma=0.15)
    # Samples drawn for grids, the class histogram and IS/FID come from z | k ~ N(mu_k,
    # sample_sigma * Sigma_k): GM-GAN's post-training quality-diversity control (their section
    # 4.3; < 1 = higher quality, lower diversity). Training always uses 1.
    "sample_sigma": 1.0,
    # GM-GAN (model gmgan): the generator's batch b_G (0 = batch_size; the paper: b_D = 64,
    # b_G = 128) and its clustering (section 5.1, Algorithm 2): M generated samples per
    # Gaussian train a K-way classifier for this many epochs; real rows go to its argmax.
    "g_batch_size": 0,
    "gm_cluster_samples": 1000,
    "gm_cluster_epochs": 5,
    # slcGAN (model slcgan, Eq. 6): lambda_2 (L_mi) and lambda_3 (L_aug), 1 in the paper;
    # D steps per G and C step (Algorithm 1 shows 1; the paper's implementation details 2);
    # spectral normalisation of C and G ("We use spectral normalization in both C and G").
    "slc_lambda_mi": 1.0,
    "slc_lambda_aug": 1.0,
    "d_steps": 1,
    "spectral_norm": True,
    # engineering
    "backend": "auto",  # kmgan_ext op backend
    "amp": False,  # bf16 autocast (GPU only)
    "compile": False,  # torch.compile of D and G (GPU only)
    "num_workers": 0,
    # CPU threads for torch (0 = torch's default). Tiny models want 1: on a loaded 2-core
    # machine a 64x100 batch norm took 45 ms with 2 OpenMP threads and 0.1 ms with 1.
    "threads": 0,
    "log_every": 50,
    "sample_every": 1,  # epochs between sample grids
    "checkpoint_every": 1,  # epochs between checkpoints (always one at the end and on a stop)
    "keep_checkpoints": 3,  # newest checkpoints kept (a corrupt newest one falls back to an older)
    # seconds a collective (DDP all-reduce, barrier) waits for the other ranks before the run
    # stops with an error naming the rank and the phase (gloo's/NCCL's own default is 30 min)
    "dist_timeout": 300.0,
    "progress": True,
    "tensorboard": True,
    # evaluation
    "eval_samples": 10000,  # rows used for feature clustering metrics (0 = all)
    "fashion_hist": False,  # Fig. 5c: classifier + class histogram of generated images
    "hist_samples": 5000,
    "classifier_epochs": 5,
    "classifier_path": "",  # "" = train one into the run folder (cached there)
    "classifier_n_train": 0,  # 0 = all 60,000 Fashion-MNIST training images
    "eval_is": False,
    "eval_fid": False,
    "inception_weights": "",  # torchvision inception_v3 state dict; "" = random-init stand-in
    "inception_samples": 10000,
    "interpolation": True,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "model": ("kmgan", "dcgan", "reduced", "generalized", "gmgan", "slcgan"),
    "dataset": ("synthetic", "mnist", "mnist5k", "fashion", "cifar10", "celeba", "imagefolder"),
    "data_split": ("all", "train"),
    "arch": ("auto", "table2", "dcgan28", "table3", "table7"),
    "device": ("auto", "cpu", "cuda"),
    "d_round_mode": ("steps", "floor"),
    "dcgan_head": ("linear", "none"),
    "pairwise_reduction": ("sum", "mean"),
    "distance_reduction": ("fro", "mean", "sq_sum"),
    "center_optimizer": ("separate", "shared"),
    "prior": ("normal", "gm_static", "gm_dynamic"),
    "backend": ("auto", "reference", "cpu", "triton", "cuda"),
}

# One per experiment of the paper (section 4). Comments give the paper's source.
CONFIGS: dict[str, dict[str, Any]] = {
    # Section 4.1 / Table 2: 4 Gaussians mapped to R^100. "we simply set d_round to be 0":
    # under the steps reading (see d_round_mode above) no center-loss step runs; the floor
    # reading (step every iteration) is `--set d_round_mode=floor`.
    # 6 epochs: a quick single run; `make demo` (4 seeds x 8 epochs) and
    # `python -m kmgan_ext.train.reproduce synthetic` (10 seeds x the paper's 24) set their own.
    "synthetic": {
        "dataset": "synthetic",
        "k": 4,
        "d_round": 0,
        "d_round_mode": "steps",
        "epochs": 6,
        "fake_pool": 10000,
        "log_every": 25,
        "eval_samples": 0,
        "interpolation": False,
        "threads": 1,
        "sample_every": 2,  # Fig. 2 shows the features at several stages of training
    },
    # Section 4.2: DCGAN architecture, d_round 10,000, 24 epochs, clip box [-1, 1] (4.2.2).
    "mnist": {"dataset": "mnist", "k": 10, "d_round": 10000, "clip": 1.0, "epochs": 24},
    # Section 4.3: as MNIST; Fig. 5c histogram of 5,000 samples by a 3-layer CNN.
    "fashion": {
        "dataset": "fashion",
        "k": 10,
        "d_round": 10000,
        "clip": 1.0,
        "epochs": 24,
        "fashion_hist": True,
    },
    # Section 4.4 / Table 3 (64x64 input as the table states): d_round 20,000, box [-0.1, 0.1].
    "cifar10": {
        "dataset": "cifar10",
        "k": 10,
        "d_round": 20000,
        "clip": 0.1,
        "epochs": 24,
        "eval_is": True,
    },
    # Section 4.5 / Table 7: d_round 20,000, box [-0.01, 0.01], lambda 10 (Eq. 7), FID 10k.
    "celeba": {
        "dataset": "celeba",
        "model": "generalized",
        "k": 10,
        "d_round": 20000,
        "clip": 0.01,
        "lambda": 10.0,
        "epochs": 24,
        "eval_fid": True,
    },
}

# The paper's sweeps: (base config, key, values). "None" in the paper's tables is 0 here
# (no clipping / no center-loss step); each value is run as a separate run folder.
SWEEPS: dict[str, tuple[str, str, list]] = {
    "table4_clip": ("cifar10", "clip", [0.0, 1.0, 0.1, 0.01]),
    "table5_d_round": ("cifar10", "d_round", [0, 5000, 10000, 20000, 30000]),
    "table8_lambda": ("celeba", "lambda", [0.0, 1.0, 5.0, 10.0, 20.0]),
}

# Keys a resumed run may change: nothing that alters what the checkpoint's state means.
RESUME_MUTABLE = {
    "epochs",
    "max_steps",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "dist_timeout",
    "progress",
    "tensorboard",
    "num_workers",
    "threads",
    "device",
    "data_root",
    "eval_samples",
    "fashion_hist",
    "hist_samples",
    "classifier_epochs",
    "classifier_path",
    "classifier_n_train",
    "eval_is",
    "eval_fid",
    "inception_weights",
    "inception_samples",
    "interpolation",
    "feature_batch",
    "sample_sigma",
    "gm_cluster_samples",
    "gm_cluster_epochs",
}

# One line per model for ``--list``.
MODELS: dict[str, str] = {
    "kmgan": "KM-GAN, Algorithm 1 (Wang et al. 2019): k-means in D's feature space, Eq. 4-6",
    "generalized": "generalized KM-GAN, Eq. 7 (+ lambda (L_intra - L_inter))",
    "reduced": "reduced KM-GAN, Algorithm 2 (k-means in pixel space)",
    "dcgan": "DCGAN baseline on the same networks",
    "gmgan": "unsupervised GM-GAN (Ben-Yosef & Weinshall 2018): GAN with a Gaussian-mixture prior "
    "(prior=gm_static|gm_dynamic); clustering by their Algorithm 2",
    "slcgan": "slcGAN (Noroozi 2020): clustering network C + conditional G + joint D, Eq. 3-6, Algorithm 1",
}


class ConfigError(ValueError):
    """A bad key or value in a config, a config file or a --set override."""


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key} must be a boolean (true/false), got {text!r}")


def coerce(key: str, value: Any) -> Any:
    """``value`` converted to the type of ``DEFAULTS[key]`` and checked against CHOICES."""
    if key not in DEFAULTS:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(DEFAULTS))}")
    default = DEFAULTS[key]
    try:
        if isinstance(default, bool):
            out = value if isinstance(value, bool) else _parse_bool(key, str(value))
        elif isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            out = int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        elif isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        else:
            out = str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key} must be of type {type(default).__name__} (like {default!r}), got {value!r}"
        ) from None
    if key in CHOICES and out not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {CHOICES[key]}, got {out!r}")
    if isinstance(out, (int, float)) and not isinstance(out, bool) and out < 0 and key != "seed":
        raise ConfigError(f"{key} must be >= 0, got {out!r}")
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["k=4", "lambda=10"]`` -> ``{"k": 4, "lambda": 10.0}`` (typed, validated)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        out[key] = coerce(key, value.strip())
    return out


def load_config(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved config: DEFAULTS <- built-in config or JSON file <- overrides.

    ``name_or_path`` is a built-in name (``synthetic``, ``mnist``, ``fashion``, ``cifar10``,
    ``celeba``) or a JSON file of keys (a run folder's ``config.json`` works).
    """
    cfg = copy.deepcopy(DEFAULTS)
    if name_or_path in CONFIGS:
        base = CONFIGS[name_or_path]
        cfg["config"] = name_or_path
    elif os.path.isfile(name_or_path):
        with open(name_or_path) as f:
            base = json.load(f)
        if not isinstance(base, dict):
            raise ConfigError(f"{name_or_path}: a config file must hold a JSON object")
        base = {k: v for k, v in base.items() if k != "config"}
        cfg["config"] = os.path.abspath(name_or_path)
    else:
        raise ConfigError(
            f"--config {name_or_path!r} is neither a built-in config "
            f"({', '.join(CONFIGS)}) nor a JSON file"
        )
    for key, value in base.items():
        cfg[key] = coerce(key, value)
    for key, value in (overrides or {}).items():
        cfg[key] = coerce(key, value)
    check(cfg)
    return cfg


def check(cfg: dict[str, Any]) -> None:
    """Cross-key consistency."""
    if cfg["batch_size"] < 2:
        raise ConfigError("batch_size must be >= 2 (batch norm needs at least 2 rows)")
    if cfg["k"] < 1:
        raise ConfigError("k must be >= 1")
    if cfg["keep_checkpoints"] < 1:
        raise ConfigError("keep_checkpoints must be >= 1")
    if cfg["dist_timeout"] <= 0:
        raise ConfigError("dist_timeout must be > 0 seconds")
    if cfg["model"] == "gmgan" and cfg["prior"] == "normal":
        raise ConfigError("model gmgan needs a mixture prior: add --set prior=gm_static (the paper's) or prior=gm_dynamic")
    if cfg["model"] == "slcgan" and cfg["prior"] != "normal":
        raise ConfigError("model slcgan draws z from N(0, I) (its p_z): prior must be normal")
    if cfg["model"] == "slcgan" and cfg["k"] < 2:
        raise ConfigError("model slcgan needs k >= 2 clusters")
    if cfg["d_steps"] < 1:
        raise ConfigError("d_steps must be >= 1")


def resume_overrides(saved: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The saved config with the overrides a resume may apply; others are a ConfigError."""
    cfg = dict(saved)
    for key, value in overrides.items():
        if key not in RESUME_MUTABLE and cfg.get(key) != value:
            raise ConfigError(
                f"--resume cannot change {key!r} ({cfg.get(key)!r} -> {value!r}): it changes what "
                f"the checkpoint means; keys a resume may change: {', '.join(sorted(RESUME_MUTABLE))}"
            )
        cfg[key] = value
    return cfg
