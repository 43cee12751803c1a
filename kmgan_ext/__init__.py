"""kmgan_ext: fused clustering ops for training neural networks, and a KM-GAN trainer.

    import kmgan_ext as km
    labels, dist2 = km.assign(x, centers)
    km.minibatch_update_(centers, counts, x, labels)
    loss = km.kmgan_center_loss(x_real, l_real, c_real, x_fake, l_fake, c_fake)

Estimators for scikit-learn users: km.KMeans, km.MiniBatchKMeans. Modules for training
loops: km.VectorQuantizer (VQ-VAE codebook), km.CenterLoss (Wen et al.), 
km.MiniBatchKMeansModule.

Importing never touches the GPU and never fails for a missing triton, faiss, nvcc or GPU:
backends load lazily; ``km.available_backends()`` says which are usable and why not.
"""
from ._checks import set_debug
from ._show_config import show_config
from ._version import __version__
from ._dispatch import BACKENDS, available_backends
from .assign import assign
from . import assign_topk as _assign_topk  # noqa: F401  (registers km.assign(k=...)'s op)
from .soft_assign import soft_assign
from .assigned_distance import assigned_distance
from .center_loss import center_loss, kmgan_center_loss
from .minibatch_update import ema_update_, minibatch_step_, minibatch_update_
from .pairwise_l1 import pairwise_l1
from .reassign_dead import reassign_dead_
from .kmgan_losses import KMGANLosses, KMGANLossTerms, kmgan_losses
from .seeding import KMeansResult, extract_features, kmeans, kmeans_parallel, kmeans_plusplus
from .estimators import KMeans, MiniBatchKMeans
from .modules import CenterLoss, MiniBatchKMeansModule, VectorQuantizer, VQOutput

__all__ = [
    "BACKENDS",
    "available_backends",
    "set_debug",
    "show_config",
    "assign",
    "soft_assign",
    "minibatch_update_",
    "minibatch_step_",
    "ema_update_",
    "reassign_dead_",
    "kmgan_center_loss",
    "center_loss",
    "assigned_distance",
    "pairwise_l1",
    "kmgan_losses",
    "KMGANLosses",
    "KMGANLossTerms",
    "extract_features",
    "kmeans_plusplus",
    "kmeans",
    "KMeansResult",
    "kmeans_parallel",
    "KMeans",
    "MiniBatchKMeans",
    "MiniBatchKMeansModule",
    "VectorQuantizer",
    "VQOutput",
    "CenterLoss",
]
