"""km.VectorQuantizer: the VQ-VAE codebook (van den Oord et al. 2017) as an nn.Module.

Forward, per head h with codebook E_h (K, d) and inputs z (N, d):

    k_i   = argmin_k ||z_i - e_k||^2                      (km.assign: exact, ties to lowest k)
    q_i   = e_{k_i};   output = z + sg[q - z]            (straight-through estimator)
    loss  = commitment_weight * mean ||z - sg[q]||^2      (commitment, Eq. 3 third term)
          + mean ||sg[z] - q||^2                           (codebook term: learnable codebook only)

"mean" is over all N * H * d elements, as vector-quantize-pytorch's ``F.mse_loss``; the
squared distances come from the fused ``km.assigned_distance`` (sq_sum) and its backward.
The codebook is learnt, unless ``learnable_codebook``, by the EMA of appendix A.1 through
``km.ema_update_``: ``N_k <- g N_k + (1-g) n_k``, ``M_k <- g M_k + (1-g) S_k``,
``e_k = M_k / N'_k`` with Laplace-smoothed ``N'_k``. The state starts at ``N = 1``,
``M = E`` (as vector-quantize-pytorch's), so a code no row ever reaches stays where it is.

Heads: the last dimension of the input is H * d, split into H chunks, each quantized by its
own codebook (vector-quantize-pytorch's ``separate_codebook_per_head``). The ops have no
batched (H, K, d) form yet, so heads run in a Python loop, one assign / loss / update each.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from .._cluster_stats import cluster_sums
from ..assign import assign
from ..assigned_distance import assigned_distance
from ..minibatch_update import ema_update_
from ..seeding import kmeans_plusplus
from ._distributed import world
from ._state_dict import check_state_shapes

_UPDATE = ("never", "train", "always")


class VQOutput(NamedTuple):
    quantized: Tensor  # (..., H * d), input dtype, straight-through gradient to the input
    codes: Tensor  # (...) int64 for one head, (..., H) for several
    loss: Tensor  # scalar: commitment (+ codebook term when learnable)
    perplexity: Tensor  # scalar: exp(entropy) of the batch's code usage, averaged over heads


class VectorQuantizer(nn.Module):
    """Vector quantization with an EMA (or learnable) codebook, as in VQ-VAE.

    Args:
        num_codes: K, codes per codebook. dim: d, the dimension of one code.
        heads: H codebooks; the input's last dimension is H * d.
        decay, eps: the EMA's decay g and Laplace smoothing (van den Oord et al.: 0.99, 1e-5).
        commitment_weight: beta of the commitment term (the paper's 0.25).
        learnable_codebook: the codebook is an nn.Parameter trained by the loss's codebook
            term (no EMA).
        kmeans_init: the codebook is seeded by k-means++ (``km.kmeans_plusplus``) from the
            first batch that updates it; ``init_(data)`` seeds it from any data set instead.
        threshold_dead_code: after each update, codes whose EMA cluster size is below this are
            replaced by rows of the current batch drawn without replacement from a generator
            seeded with ``seed`` (deterministic), their state reset to ``N = threshold``,
            ``M = threshold * row``. 0 = off.
        cosine: inputs and codes are L2-normalised, the code is the largest cosine similarity
            (= the nearest unit vector), and the codebook is renormalised after each update.
        update: when a forward updates the codebook (EMA and dead codes): "never" (default:
            only ``forward(x, update=True)`` does), "train" (in training mode) or "always".
            Never a silent side effect of ``model.train()``.
        seed: of the k-means++ init and the dead-code draws.
        group: the process group whose ranks' statistics are all-reduced before the update
            (default WORLD when torch.distributed is initialized with more than one rank).
        dtype, device: of the codebook and its state (float32 by default).
        backend: of the ops.
    """

    codebook: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    initted: Tensor

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        heads: int = 1,
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 0.25,
        learnable_codebook: bool = False,
        kmeans_init: bool = False,
        threshold_dead_code: float = 0.0,
        cosine: bool = False,
        update: str = "never",
        seed: int = 0,
        group=None,
        dtype: torch.dtype = torch.float32,
        device=None,
        deterministic: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        for name, v in (("num_codes", num_codes), ("dim", dim), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        decay, eps = _checks.decay(decay), _checks.eps(eps)
        commitment_weight = _checks.real("commitment_weight", commitment_weight, minimum=0.0)
        threshold_dead_code = _checks.real("threshold_dead_code", threshold_dead_code, minimum=0.0)
        for name, v in (("learnable_codebook", learnable_codebook), ("kmeans_init", kmeans_init),
                        ("cosine", cosine), ("deterministic", deterministic)):
            _checks.boolean(name, v)
        seed = _checks.integer("seed", seed, minimum=0)
        if update not in _UPDATE:
            raise ValueError(f"update must be one of {_UPDATE}, got {update!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.num_codes, self.dim, self.heads = num_codes, dim, heads
        self.decay, self.eps = float(decay), float(eps)
        self.commitment_weight = float(commitment_weight)
        self.learnable_codebook = bool(learnable_codebook)
        self.kmeans_init = bool(kmeans_init)
        self.threshold_dead_code = float(threshold_dead_code)
        self.cosine = bool(cosine)
        self.update = update
        self.seed = int(seed)
        self.group = group
        self.deterministic = deterministic
        self.backend = backend

        embed = torch.empty(heads, num_codes, dim, dtype=dtype, device=device)
        nn.init.kaiming_uniform_(embed)
        if cosine:
            embed = F.normalize(embed, dim=-1)
        if self.learnable_codebook:
            self.codebook = nn.Parameter(embed)
        else:
            self.register_buffer("codebook", embed)
        self.register_buffer("cluster_size", torch.ones(heads, num_codes, dtype=dtype, device=device))
        self.register_buffer("embed_sum", embed.detach().clone())
        self.register_buffer("initted", torch.tensor(not self.kmeans_init, device=device))
        self._gen = torch.Generator().manual_seed(self.seed + 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # every shape before any copy: torch copies the matching entries and raises after,
        # which would leave a half-loaded codebook and EMA state
        h, k, d = self.heads, self.num_codes, self.dim
        check_state_shapes(state_dict, prefix, {"codebook": (h, k, d), "cluster_size": (h, k),
                                                "embed_sum": (h, k, d), "initted": ()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, heads={self.heads}, "
                f"decay={self.decay}, commitment_weight={self.commitment_weight}, "
                f"learnable_codebook={self.learnable_codebook}, cosine={self.cosine}, "
                f"update={self.update!r}")

    # ------------------------------------------------------------------ input layout
    def _split(self, x: Tensor, name: str = "x") -> Tensor:
        """(..., H * d) -> (N, H, d) in the codebook's dtype (a copy only for 16-bit x)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating, got {x.dtype}")
        hd = self.heads * self.dim
        if x.dim() < 1 or x.shape[-1] != hd:
            raise ValueError(
                f"{name} must have last dimension heads * dim = {hd}, got shape {tuple(x.shape)}")
        if x.device != self.codebook.device:
            raise ValueError(f"{name} must be on {self.codebook.device} (as the codebook), got {x.device}")
        z = x.reshape(-1, self.heads, self.dim).to(self.codebook.dtype)
        return F.normalize(z, dim=-1) if self.cosine else z

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_(self, data: Tensor) -> "VectorQuantizer":
        """Seed every head's codebook by k-means++ over all rows of ``data`` (..., H * d);
        the EMA state restarts at N = 1, M = E. Under DDP rank 0 seeds and broadcasts."""
        z = self._split(data, "data").detach()
        if z.numel() and not bool(torch.isfinite(z).all()):
            raise ValueError("data contains NaN or Inf: k-means++ cannot seed from it")
        if z.shape[0] < self.num_codes:
            raise ValueError(f"data must have at least num_codes = {self.num_codes} rows, got {z.shape[0]}")
        g = world(self.group)
        if g is None or dist.get_rank(g) == 0:
            for h in range(self.heads):
                self.codebook.data[h] = kmeans_plusplus(z[:, h].contiguous(), self.num_codes,
                                                        seed=self.seed + h)
        if g is not None:
            dist.broadcast(self.codebook.data, src=dist.get_global_rank(g, 0), group=g)
        self.cluster_size.fill_(1.0)
        self.embed_sum.copy_(self.codebook.data)
        self.initted.fill_(True)
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, *, update: bool | None = None) -> VQOutput:
        """Quantize x (..., H * d); see the class docstring. ``update`` overrides the
        module's ``update`` setting for this call."""
        z = self._split(x)
        if update is None:
            update = self.update == "always" or (self.update == "train" and self.training)
        if update and not bool(self.initted):
            self.init_(x)
        n = z.shape[0]
        codes = torch.empty(n, self.heads, dtype=torch.int64, device=x.device)
        q = torch.empty_like(z)
        sq = z.new_zeros(())
        cb_sq = z.new_zeros(())
        perplexity = z.new_zeros(())
        for h in range(self.heads):
            zh = z[:, h]
            e = self.codebook[h]
            if update:
                # the update below rewrites the codebook in place (through .data, which no
                # version counter sees): the loss's backward must read the codes it used
                e = e.clone()
            k, _ = assign(zh.detach(), e.detach(), backend=self.backend)
            codes[:, h] = k
            q[:, h] = e.detach()[k]
            if n:
                # 0.5 * sum ||z - sg[e]||^2: gradient to z only
                sq = sq + assigned_distance(zh, k, e.detach(), reduction="sq_sum", backend=self.backend)
                if self.learnable_codebook:
                    cb_sq = cb_sq + assigned_distance(zh.detach(), k, e, reduction="sq_sum",
                                                      backend=self.backend)
                perplexity = perplexity + _perplexity(k, self.num_codes, z.dtype)
        elems = max(1, n * self.heads * self.dim)
        loss = self.commitment_weight * 2.0 * sq / elems
        if self.learnable_codebook:
            loss = loss + 2.0 * cb_sq / elems
        if update and n and not self.learnable_codebook:
            self._ema(z.detach(), codes)
        if update and n and self.threshold_dead_code > 0:
            self._replace_dead(z.detach())
        # straight-through: the value of q, the gradient of the identity to x (through the
        # normalisation when cosine); the codebook term's gradient reaches a learnable
        # codebook through `loss` only
        zq = z + (q - z).detach()
        quantized = zq.reshape(x.shape).to(x.dtype)
        codes_out = codes.reshape(*x.shape[:-1], self.heads)
        if self.heads == 1:
            codes_out = codes_out.squeeze(-1)
        return VQOutput(quantized, codes_out, loss, perplexity / self.heads)

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def _ema(self, z: Tensor, codes: Tensor) -> None:
        g = world(self.group)
        for h in range(self.heads):
            zh, k = z[:, h].contiguous(), codes[:, h].contiguous()
            if g is None:
                ema_update_(self.codebook.data[h], self.cluster_size[h], self.embed_sum[h], zh, k,
                            decay=self.decay, eps=self.eps, deterministic=self.deterministic,
                            backend=self.backend)
            else:
                self._ema_distributed(h, zh, k, g)
            if self.cosine:
                self.codebook.data[h] = F.normalize(self.codebook.data[h], dim=-1)

    def _ema_distributed(self, h: int, zh: Tensor, k: Tensor, g) -> None:
        """The same EMA with n_k and S_k summed over the ranks first (all ranks agree)."""
        sums, cnt = cluster_sums(zh, k, self.num_codes, deterministic=self.deterministic,
                                 backend=self.backend)
        dist.all_reduce(sums, group=g)
        dist.all_reduce(cnt, group=g)
        gamma = self.decay
        state_dtype = self.cluster_size.dtype
        ns = gamma * self.cluster_size[h].to(torch.float64) + (1 - gamma) * cnt.to(torch.float64)
        ms = gamma * self.embed_sum[h].to(torch.float64) + (1 - gamma) * sums
        self.cluster_size[h] = ns.to(state_dtype)
        self.embed_sum[h] = ms.to(state_dtype)
        ns, ms = self.cluster_size[h].to(torch.float64), self.embed_sum[h].to(torch.float64)
        total = ns.sum()
        smoothed = (ns + self.eps) / (total + self.num_codes * self.eps) * total
        ok = smoothed > 0
        new = ms / torch.where(ok, smoothed, torch.ones_like(smoothed))[:, None]
        e = self.codebook.data[h]
        e.copy_(torch.where(ok[:, None], new, e.to(torch.float64)))

    @torch.no_grad()
    def _replace_dead(self, z: Tensor) -> None:
        g = world(self.group)
        rank0 = g is None or dist.get_rank(g) == 0
        for h in range(self.heads):
            dead = self.cluster_size[h] < self.threshold_dead_code
            n_dead = int(dead.sum())
            if n_dead == 0 or not rank0:
                continue
            n = z.shape[0]
            # without replacement when the batch has enough rows (vector-quantize-pytorch
            # samples the same way); the generator makes it reproducible given the seed
            if n >= n_dead:
                rows = torch.randperm(n, generator=self._gen)[:n_dead]
            else:
                rows = torch.randint(n, (n_dead,), generator=self._gen)
            new = z[rows.to(z.device), h]
            idx = torch.nonzero(dead).flatten()
            self.codebook.data[h, idx] = new
            self.cluster_size[h, idx] = self.threshold_dead_code
            self.embed_sum[h, idx] = new * self.threshold_dead_code
        if g is not None:
            src = dist.get_global_rank(g, 0)
            for t in (self.codebook.data, self.cluster_size, self.embed_sum):
                dist.broadcast(t, src=src, group=g)

    # ------------------------------------------------------------------ statistics
    def usage(self) -> Tensor:
        """(H, K): each code's share of the EMA cluster sizes (sums to 1 per head)."""
        cs = self.cluster_size
        return cs / cs.sum(-1, keepdim=True).clamp_min(torch.finfo(cs.dtype).tiny)

    def codebook_perplexity(self) -> Tensor:
        """(H,): exp(entropy) of usage(), in [1, K]: K when every code is used equally."""
        p = self.usage()
        return torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum(-1))


def _perplexity(codes: Tensor, k: int, dtype) -> Tensor:
    """exp(entropy) of the codes' frequencies in this batch (no host sync: scatter_add)."""
    counts = torch.zeros(k, dtype=torch.float64, device=codes.device)
    counts.scatter_add_(0, codes, torch.ones(codes.shape[0], dtype=torch.float64, device=codes.device))
    p = counts / max(1, codes.shape[0])
    return torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()).to(dtype)
