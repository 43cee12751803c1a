"""km.extract_features: run a model over a whole dataset, in chunks, into one (N, d) array.

KM-GAN seeds its real centers by k-means++ over D(X) for the whole training set (paper,
Algorithm 1): this is the D(X) pass.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .. import _progress
from ._data import _from_numpy

# A .npy header padded to this many bytes, written once the row count is known. 128 bytes
# hold the header of any 2-D array (magic + length + a dict of under 100 characters).
_NPY_HEADER_BYTES = 128


def _batches(data, batch_size: int, num_workers: int) -> tuple[Iterable, int | None]:
    """An iterable of input batches, and the number of rows when it is known up front."""
    if isinstance(data, (Tensor, np.ndarray)):
        n = int(data.shape[0])
        return (data[s : s + batch_size] for s in range(0, n, batch_size)), n
    if isinstance(data, DataLoader):
        # Rows known up front when the batches come from a sized sampler (the default).
        n = None
        bs = data.batch_sampler
        if not isinstance(data.dataset, IterableDataset) and hasattr(bs, "sampler"):
            try:
                n = len(bs.sampler)
            except TypeError:  # a sampler without __len__
                n = None
            if n is not None and getattr(bs, "drop_last", False):
                n -= n % bs.batch_size
        return data, n
    if isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        n = None if isinstance(data, IterableDataset) else len(data)
        return loader, n
    if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
        raise TypeError(
            "data must be a torch Dataset, a DataLoader, a tensor, a numpy array or an "
            f"iterable of batches, got {type(data).__name__}"
        )
    return data, None  # an iterable of batches (e.g. a list of tensors), used as it comes


def _inputs(batch):
    """The model input of a batch: x of an (x, y, ...) tuple/list, else the batch itself."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("data yielded an empty batch tuple")
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = _from_numpy(np.ascontiguousarray(batch))
    if not isinstance(batch, Tensor):
        raise TypeError(f"data must yield tensors or (x, y) tuples, got {type(batch).__name__}")
    return batch


def _default_device(fn) -> torch.device:
    if isinstance(fn, torch.nn.Module):
        for t in fn.parameters():
            return t.device
        for t in fn.buffers():
            return t.device
    return torch.device("cpu")


class _NpyWriter:
    """Appends (rows, d) blocks to a .npy file; the header is written at close, when N is known,
    so the row count never has to be known in advance."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.f = open(self.path, "wb")
        self.f.write(b"\0" * _NPY_HEADER_BYTES)
        self.n, self.d, self.dtype = 0, None, None

    def write(self, block: np.ndarray) -> None:
        if self.d is None:
            self.d, self.dtype = block.shape[1], block.dtype
        self.f.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.n += block.shape[0]

    def close(self, d_if_empty: int) -> np.memmap:
        dtype = self.dtype or np.dtype(np.float32)
        d = self.d if self.d is not None else d_if_empty
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": (self.n, d)}
        text = repr(header).encode("latin1")
        pad = _NPY_HEADER_BYTES - 10 - len(text) - 1
        if pad < 0:
            raise RuntimeError(f"npy header too long for shape ({self.n}, {d})")
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + np.uint16(len(text) + pad + 1).tobytes())
        self.f.write(text + b" " * pad + b"\n")
        self.f.close()
        return np.load(self.path, mmap_mode="r+")


def extract_features(
    fn: Callable[[Tensor], Tensor],
    data,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    memmap_path: str | os.PathLike | None = None,
    out_device: str | torch.device | None = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> Tensor | np.memmap:
    """``fn`` applied to every sample of ``data``, batch by batch, under ``torch.no_grad()``.

    Args:
        fn: the model (an ``nn.Module`` or any callable) mapping a batch (B, ...) to
            features (B, ...); outputs are flattened to (B, d). Its train/eval mode is left as
            it is: call ``fn.eval()`` first if it has batch norm or dropout.
        data: a map-style or iterable ``Dataset``, a ``DataLoader`` or any iterable of
            batches (used as they come), a tensor or a numpy array (sliced into
            ``batch_size`` rows). Samples that are ``(x, y, ...)`` tuples contribute x.
        batch_size: rows per forward pass (ignored for a DataLoader).
        device: where fn runs; None = the device of fn's first parameter (CPU otherwise).
            Each batch is moved there.
        autocast_dtype: run fn under ``torch.autocast(device.type, dtype=autocast_dtype)``
            (e.g. torch.bfloat16); None = no autocast.
        memmap_path: write the features to this .npy file (a numpy memmap, reopenable with
            ``np.load(path, mmap_mode="r")``) instead of memory, for datasets whose features
            do not fit in RAM. bfloat16 features are stored as float32 (numpy has no bf16).
        out_device: where the returned tensor lives (default CPU; None = ``device``).
        num_workers: DataLoader workers when ``data`` is a Dataset.
        progress: report progress on stderr: a bar on a terminal (with tqdm installed), a
            line every 30 s when writing to a file or pipe (see kmgan_ext/_progress.py).

    Returns:
        an (N, d) tensor in fn's output dtype, rows in data order; or, with ``memmap_path``,
        the (N, d) ``np.memmap``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = torch.device(device) if device is not None else _default_device(fn)
    out_dev = torch.device(out_device) if out_device is not None else dev
    batches, n = _batches(data, batch_size, num_workers)

    bar = _progress.progress(n, desc="features", unit="rows", enabled=progress, leave=False, summary=False)
    writer = _NpyWriter(memmap_path) if memmap_path is not None else None
    parts: list[Tensor] = []
    out: Tensor | None = None
    done = 0
    try:
        with torch.no_grad():
            for batch in batches:
                xb = _inputs(batch).to(dev, non_blocking=True)
                if autocast_dtype is not None:
                    with torch.autocast(dev.type, dtype=autocast_dtype):
                        feats = fn(xb)
                else:
                    feats = fn(xb)
                if not isinstance(feats, Tensor):
                    raise TypeError(f"fn must return a tensor, got {type(feats).__name__}")
                feats = feats.detach().reshape(feats.shape[0], -1)
                rows = feats.shape[0]
                if writer is not None:
                    if feats.dtype == torch.bfloat16:
                        feats = feats.float()
                    writer.write(feats.cpu().numpy())
                elif n is not None:
                    if out is None:  # the size is known: one allocation, no final copy
                        out = torch.empty(n, feats.shape[1], dtype=feats.dtype, device=out_dev)
                    if done + rows > n:
                        raise ValueError(f"data yielded more than the {n} rows it announced")
                    out[done : done + rows].copy_(feats)
                else:
                    parts.append(feats.to(out_dev))
                done += rows
                bar.update(rows)
    except BaseException:
        if writer is not None:
            writer.f.close()  # the partial file stays; its header is not written
        raise
    finally:
        bar.close()
    if writer is not None:
        return writer.close(d_if_empty=0)
    if n is not None:
        if out is None:
            return torch.empty(0, 0, device=out_dev)
        if done != n:
            raise ValueError(f"data yielded {done} rows, expected {n}")
        return out
    return torch.cat(parts) if parts else torch.empty(0, 0, device=out_dev)
