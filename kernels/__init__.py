"""Triton kernels of kmgan_ext, installed as ``kmgan_ext.kernels``.

Each module holds one op's kernels and launchers; this package exposes the backend
interface (see kmgan_ext/_dispatch.py and kmgan_ext/reference.py) that ``backend="triton"``
routes to: same function names, arguments and outputs as the reference, inputs already
validated and contiguous.

The kernels run on CUDA tensors, and on CPU tensors through the Triton interpreter
(``TRITON_INTERPRET=1`` set before triton is imported), which is how CI tests them. Nothing
here touches a GPU at import time.

Autotuning and warm-up: ``assign``'s tensor-core kernel is autotuned on a GPU; the first call
per (K, d, log2 N, dtype) benchmarks its configs (many launches and host syncs). Inside CUDA-
graph capture (``torch.cuda.graphs``, ``torch.compile(mode="reduce-overhead")``), and when
autotuning is switched off (``set_autotune(False)`` or ``KMGAN_TRITON_AUTOTUNE=0``), no
benchmarking happens: a launch takes the config chosen for the same key by an earlier call in
this process, else a fixed default. So: run one eager call per shape before capturing (the
warm-up) to capture the tuned config; without it the capture is still correct, with the
default config. ``set_autotune(False)`` makes the launch sequence the same on every run.
"""
from ._common import set_autotune
from .assign import assign, assign_backward, assign_stats
from .assign_topk import assign_topk
from .soft_assign import soft_assign, soft_assign_backward
from .assigned_distance import assigned_distance, assigned_distance_backward
from .center_loss import center_loss_backward, center_loss_forward
from .kmgan_losses import kmgan_losses, kmgan_losses_backward
from .minibatch_update import ema_update_, minibatch_step_, minibatch_update_
from .pairwise_l1 import pairwise_l1, pairwise_l1_backward

__all__ = [
    "set_autotune",
    "assign",
    "assign_backward",
    "assign_stats",
    "assign_topk",
    "soft_assign",
    "soft_assign_backward",
    "minibatch_update_",
    "minibatch_step_",
    "ema_update_",
    "center_loss_forward",
    "center_loss_backward",
    "assigned_distance",
    "assigned_distance_backward",
    "pairwise_l1",
    "pairwise_l1_backward",
    "kmgan_losses",
    "kmgan_losses_backward",
]
