"""Evaluation: clustering accuracy (Hungarian matching) and NMI, the Fashion-MNIST classifier
of Fig. 5c, Inception Score and FID.

Clustering of features for evaluation uses scikit-learn's KMeans (n_init=10), an
implementation independent of the library under test.

IS / FID need the Inception network. With ``weights`` (a torchvision ``inception_v3`` state
dict file) the numbers come from that ImageNet network; without, a *random-init* Inception v3
stands in so that the code path runs offline: such numbers say nothing about image quality
and every result carries a ``backbone`` string saying which network produced it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


# --------------------------------------------------------------------------- clustering
def cluster_accuracy(y_true, y_pred) -> float:
    """Best accuracy over one-to-one matchings of predicted clusters to classes (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        raise ValueError("cluster_accuracy of an empty labelling")
    n = int(max(y_true.max(), y_pred.max())) + 1
    w = np.zeros((n, n), dtype=np.int64)
    np.add.at(w, (y_pred, y_true), 1)
    rows, cols = linear_sum_assignment(-w)
    return float(w[rows, cols].sum() / y_true.size)


def nmi(y_true, y_pred) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(y_true), np.asarray(y_pred)))


def kmeans_labels(features: Tensor, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    x = features.detach().double().cpu().numpy()
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)


def feature_clustering(features: Tensor, labels: Tensor, k: int, seed: int) -> dict:
    """k-means (k clusters) on the features against the ground-truth labels."""
    pred = kmeans_labels(features, k, seed)
    y = labels.cpu().numpy()
    return {"acc": cluster_accuracy(y, pred), "nmi": nmi(y, pred)}


def class_separation(features: Tensor, labels: Tensor, threshold: float = 3.0) -> dict:
    """How compact and separated the classes are in feature space -- what k-means accuracy
    cannot see (Fig. 2: DCGAN's features on a curve or in a saturated corner).

    ``var_ratio`` = tr(S_B) / tr(S_W): between-class over within-class scatter (per row).
    For each pair of classes (i, j), d' = |mu_i - mu_j| / sqrt((s_i^2 + s_j^2) / 2) with
    s^2 the class's variance along the unit vector mu_i - mu_j (the signal-detection d' of
    the two classes projected on the line through their means); ``pairs_separated`` counts
    the pairs with d' > ``threshold``. Float64 throughout.
    """
    x = features.detach().double().cpu()
    y = labels.detach().cpu().long()
    classes = torch.unique(y)
    mu = x.mean(0)
    means, within, between = [], 0.0, 0.0
    for c in classes:
        xc = x[y == c]
        m = xc.mean(0)
        means.append(m)
        within += float(((xc - m) ** 2).sum())
        between += xc.shape[0] * float(((m - mu) ** 2).sum())
    dprimes = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            diff = means[i] - means[j]
            gap = float(diff.norm())
            if gap == 0.0:
                dprimes.append(0.0)
                continue
            u = diff / gap
            vi = float((x[y == classes[i]] @ u).var(unbiased=False))
            vj = float((x[y == classes[j]] @ u).var(unbiased=False))
            pooled = ((vi + vj) / 2) ** 0.5
            dprimes.append(float("inf") if pooled == 0.0 else gap / pooled)
    return {
        "var_ratio": between / within if within > 0 else float("inf"),
        "pairs_separated": sum(d > threshold for d in dprimes),
        "n_pairs": len(dprimes),
        "min_dprime": min(dprimes) if dprimes else float("nan"),
        "dprimes": dprimes,
    }


def assignment_clustering(pred: Tensor, labels: Tensor) -> dict:
    y, p = labels.cpu().numpy(), pred.cpu().numpy()
    return {"acc": cluster_accuracy(y, p), "nmi": nmi(y, p)}


def pca2(x: Tensor) -> Tensor:
    """The first two principal components of x (x itself when it is 2-D already)."""
    x = x.detach().double().cpu()
    if x.shape[1] <= 2:
        return x
    xc = x - x.mean(0)
    _, _, v = torch.linalg.svd(xc, full_matrices=False)
    return xc @ v[:2].T


# --------------------------------------------------------------------------- Fig. 5c
class SmallCNN(nn.Module):
    """The 3-layer convolutional classifier of Fig. 5c (the paper gives no details beyond
    "three-layer convolutional"): 3 conv layers (32, 64, 128) + a linear read-out."""

    def __init__(self, channels: int = 1, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(128 * 4, classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, device, batch: int = 500) -> Tensor:
    """Class predictions for images in [0, 1] (N, C, H, W)."""
    model.eval()
    out = [model(images[i : i + batch].to(device).float()).argmax(1).cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def train_classifier(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, epochs: int, device, seed: int = 0
) -> tuple[SmallCNN, dict]:
    """Train SmallCNN on images in [0, 1]; returns it and its train/test accuracy."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(x_train.shape[1], int(y_train.max()) + 1).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = x_train.shape[0]
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model(x_train[idx].to(device).float()), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    acc = {
        "train_acc": float((predict(model, x_train, device) == y_train).float().mean()),
        "test_acc": float((predict(model, x_test, device) == y_test).float().mean()),
        "epochs": epochs,
        "n_train": n,
        "n_test": int(x_test.shape[0]),
    }
    return model, acc


def class_histogram(pred: Tensor, classes: int) -> list[float]:
    """Fraction of predictions in each class."""
    counts = torch.bincount(pred, minlength=classes)[:classes].double()
    return (counts / max(1, pred.numel())).tolist()


# --------------------------------------------------------------------------- IS / FID
STAND_IN = "random-init torchvision inception_v3 STAND-IN (no Inception weights offline): not comparable to the paper"


def build_inception(weights: str = "", device="cpu") -> tuple[nn.Module, str]:
    """(network returning (pool features (N, 2048), logits (N, 1000)), backbone label)."""
    from torchvision.models import inception_v3

    if weights:
        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        bad = [k for k in missing + unexpected if not k.startswith("AuxLogits")]
        if bad:
            raise ValueError(f"{weights} is not a torchvision inception_v3 state dict (keys {bad[:5]} ...)")
        label = (
            f"torchvision inception_v3 (ImageNet weights from {weights}); the paper's IS/FID used the "
            f"TensorFlow Inception, so values may differ slightly"
        )
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        label = STAND_IN
    net.aux_logits, net.AuxLogits = False, None
    return _InceptionOutputs(net).to(device).eval(), label


class _InceptionOutputs(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x in [0, 1], (N, 1 or 3, H, W) -> (pool3 features, logits)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
        feat = self.net((x - mean) / std)
        return feat, self.fc(feat)


@torch.no_grad()
def inception_outputs(net: nn.Module, images: Tensor, device, batch: int = 100) -> tuple[Tensor, Tensor]:
    feats, probs = [], []
    for i in range(0, images.shape[0], batch):
        f, logits = net(images[i : i + batch].to(device).float())
        feats.append(f.double().cpu())
        probs.append(torch.softmax(logits.double(), 1).cpu())
    return torch.cat(feats), torch.cat(probs)


def inception_score(probs: Tensor, splits: int = 10) -> tuple[float, float]:
    """Eq. 8: exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits`` parts."""
    scores = []
    n = probs.shape[0]
    splits = max(1, min(splits, n))
    for part in torch.tensor_split(probs.double(), splits):
        py = part.mean(0, keepdim=True)
        kl = (part * (torch.log(part.clamp_min(1e-30)) - torch.log(py.clamp_min(1e-30)))).sum(1)
        scores.append(math.exp(float(kl.mean())))
    s = torch.tensor(scores, dtype=torch.float64)
    return float(s.mean()), float(s.std(unbiased=False)) if len(scores) > 1 else 0.0


def frechet_distance(f1: Tensor, f2: Tensor) -> float:
    """Eq. 9: ||m1 - m2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) between Gaussian fits of the rows."""
    from scipy import linalg

    a = f1.double().cpu().numpy()
    b = f2.double().cpu().numpy()
    m1, m2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(c1 @ c2)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(c1.shape[0])
        covmean = linalg.sqrtm((c1 + eps) @ (c2 + eps))
    covmean = covmean.real
    return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean))
