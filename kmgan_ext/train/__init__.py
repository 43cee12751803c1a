"""The KM-GAN trainer (paper: Wang, Chen, Shang, Wu 2019; README, The KM-GAN trainer).

    python -m kmgan_ext.train --config synthetic --out runs/syn [--set model=dcgan ...]
    python -m kmgan_ext.train --resume runs/syn --set epochs=30
    torchrun --nproc_per_node 8 -m kmgan_ext.train --config cifar10 --out runs/c10

or from Python: ``kmgan_ext.train.train("synthetic", "runs/syn", {"epochs": 5})``.
"""
from .config import CONFIGS, DEFAULTS, SWEEPS, ConfigError, load_config, parse_set
from .trainer import Trainer, resume, train

__all__ = [
    "CONFIGS",
    "DEFAULTS",
    "SWEEPS",
    "ConfigError",
    "load_config",
    "parse_set",
    "Trainer",
    "train",
    "resume",
]
