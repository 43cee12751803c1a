"""km.CenterLoss: Wen et al.'s center loss (ECCV 2016) for face recognition, as a module.

Not KM-GAN's Eq. 4 (that is ``km.kmgan_center_loss``). With class centers c_j and a batch of
features x_i with classes y_i::

    "mean":      (1/N) sum_i ||x_i - c_{y_i}||^2      (pytorch-center-loss' CenterLoss, less
                                                      its clamp of every entry to [1e-12, 1e12])
    "sum":       sum_i ||x_i - c_{y_i}||^2
    "half_sum":  (1/2) sum_i ||x_i - c_{y_i}||^2      (Wen et al.'s L_C, Eq. 2)

computed by the fused ``km.assigned_distance(..., reduction="sq_sum")`` and its backward.

Centers are either an ``nn.Parameter`` trained by the optimizer through the loss's gradient
(``centers="parameter"``, as pytorch-center-loss), or buffers updated by Wen's rule
(``centers="buffer"``, Eq. 4): for every class j in the batch, with n_j rows,

    c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)

which is the library's fused ``km.minibatch_update_`` with unit counts (that step is
exactly ``c_j - sum(c_j - x_i) / (1 + n_j)``) blended by alpha.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _checks
from ..assigned_distance import assigned_distance
from ..minibatch_update import minibatch_update_

_REDUCTIONS = {"mean", "sum", "half_sum"}
_CENTERS = ("parameter", "buffer")
_UPDATE = ("never", "train", "always")


class CenterLoss(nn.Module):
    """Center loss of Wen et al. 2016: pulls each feature to its class's center.

    Args:
        num_classes: C. feat_dim: d.
        reduction: "mean" (default), "sum" or "half_sum" (see the module docstring).
        centers: "parameter" (default; give ``loss.parameters()`` to an optimizer) or
            "buffer" (Wen's alpha rule, applied when the forward updates).
        alpha: the centers' learning rate of Wen's rule (buffer centers only), in [0, 1].
        update: buffer centers only: when a forward applies Wen's rule -- "never" (default:
            call ``update_centers_(x, labels)`` or ``forward(..., update=True)``), "train"
            (in training mode) or "always". Never a silent side effect of ``model.train()``.
        dtype, device: of the centers (float32 by default; 16-bit features are computed
            against float32 centers in float32, the autocast case).
        backend: of the ops.

    Centers start as a standard normal draw (pytorch-center-loss' ``torch.randn``).
    """

    centers: Tensor

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        reduction: str = "mean",
        centers: str = "parameter",
        alpha: float = 0.5,
        update: str = "never",
        dtype: torch.dtype = torch.float32,
        device=None,
        backend: str = "auto",
    ):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("feat_dim", feat_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {sorted(_REDUCTIONS)}, got {reduction!r}")
        if centers not in _CENTERS:
            raise ValueError(f"centers must be one of {_CENTERS}, got {centers!r}")
        alpha = _checks.real("alpha", alpha, minimum=0.0, maximum=1.0)
        if update not in _UPDATE:
            raise ValueError(f"update must be one of {_UPDATE}, got {update!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.reduction, self.alpha, self.update, self.backend = reduction, float(alpha), update, backend
        init = torch.randn(num_classes, feat_dim, dtype=dtype, device=device)
        if centers == "parameter":
            self.centers = nn.Parameter(init)
        else:
            self.register_buffer("centers", init)
        self.centers_mode = centers

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, "
                f"reduction={self.reduction!r}, centers={self.centers_mode!r}, "
                f"alpha={self.alpha}, update={self.update!r}")

    def _inputs(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not isinstance(labels, Tensor):
            raise TypeError("x and labels must be torch.Tensors")
        if x.dim() < 2 or x.shape[-1] != self.feat_dim:
            raise ValueError(f"x must have shape (N, {self.feat_dim}) or (..., {self.feat_dim}), "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating, got {x.dtype}")
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if labels.shape != x.shape[:-1]:
            raise ValueError(f"labels must have shape {tuple(x.shape[:-1])}, got {tuple(labels.shape)}")
        # 16-bit features against float32 centers: the loss is computed in the centers'
        # precision (a cast of x, differentiable back to x's dtype; the centers are not copied)
        # int64 and int32 labels go to the kernels as they are (read natively); narrower ones
        # are widened
        lab = labels.reshape(-1)
        if lab.dtype not in (torch.int64, torch.int32):
            lab = lab.to(torch.int64)
        return x.reshape(-1, self.feat_dim).to(self.centers.dtype), lab

    def forward(self, x: Tensor, labels: Tensor, *, update: bool | None = None) -> Tensor:
        """The loss (0-d, centers' dtype) of features x (N, d) -- or (..., d) -- with classes
        labels (N,) -- or (...); "mean" is over all rows."""
        xf, lab = self._inputs(x, labels)
        if update is None:
            update = self.update == "always" or (self.update == "train" and self.training)
        # the update below writes the buffer centers in place; the loss's backward must keep
        # the centers it was formed with (autograd refuses the modified ones otherwise)
        centers = self.centers.clone() if update else self.centers
        sq = assigned_distance(xf, lab, centers, reduction="sq_sum", backend=self.backend)
        if self.reduction == "mean":
            loss = 2.0 * sq / max(1, xf.shape[0])
        elif self.reduction == "sum":
            loss = 2.0 * sq
        else:
            loss = sq
        if update:
            self.update_centers_(x, labels)
        return loss

    @torch.no_grad()
    def update_centers_(self, x: Tensor, labels: Tensor) -> None:
        """Wen et al.'s Eq. 4 on buffer centers (after the loss was formed with the old ones)."""
        if self.centers_mode != "buffer":
            raise RuntimeError("update_centers_ applies to centers='buffer'; parameter centers "
                               "are trained by the optimizer")
        xf, lab = self._inputs(x.detach(), labels)
        if xf.shape[0] == 0:
            return
        # minibatch_update_ with counts = 1 gives c - sum(c - x_i) / (1 + n_j) exactly:
        # Wen's step with alpha = 1; alpha blends it with the old center.
        stepped = self.centers.clone()
        ones = torch.ones(self.num_classes, dtype=torch.int64, device=xf.device)
        minibatch_update_(stepped, ones, xf, lab, backend=self.backend)
        self.centers.lerp_(stepped, self.alpha)
