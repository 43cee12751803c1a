"""km.extract_features: every kind of data source, no grad, autocast, memmap output."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import kmgan_ext as km
from testing import DEVICES


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Tanh())


def _images(n=103):
    return torch.randn(n, 3, 4, generator=torch.Generator().manual_seed(1))


class _Pairs(Dataset):
    """Samples are (x, y) tuples, as a torchvision dataset yields them."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 3


class _Stream(IterableDataset):
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        return iter(self.x)


def test_every_source_gives_the_same_rows():
    f, x = _model(), _images()
    want = f(x).detach()
    sources = {
        "tensor": x,
        "numpy": x.numpy(),
        "dataset of (x, y)": _Pairs(x),
        "TensorDataset": TensorDataset(x, torch.zeros(len(x))),
        "iterable dataset": _Stream(x),
        "DataLoader": DataLoader(_Pairs(x), batch_size=10),
        "DataLoader drop_last": DataLoader(TensorDataset(x), batch_size=10, drop_last=True),
        "list of batches": list(x.split(17)),
    }
    for name, data in sources.items():
        got = km.extract_features(f, data, batch_size=16, progress=False)
        n = 100 if "drop_last" in name else len(x)
        assert got.shape == (n, 5), name
        torch.testing.assert_close(got, want[:n], msg=name)
        assert not got.requires_grad, name


def test_runs_without_grad_and_flattens():
    seen = []

    def fn(xb):
        seen.append(torch.is_grad_enabled())
        return xb * 2  # (B, 3, 4) -> flattened to (B, 12)

    out = km.extract_features(fn, _images(), batch_size=50, progress=False)
    assert out.shape == (103, 12) and seen == [False, False, False]


def test_autocast_bfloat16():
    lin = torch.nn.Linear(12, 5)
    x = _images().flatten(1)
    out = km.extract_features(lin, x, autocast_dtype=torch.bfloat16, progress=False)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), lin(x).detach(), rtol=3e-2, atol=3e-2)


def test_memmap_output(tmp_path):
    f, x = _model(), _images()
    path = tmp_path / "feats.npy"
    mm = km.extract_features(f, _Stream(x), memmap_path=path, progress=False)
    assert isinstance(mm, np.memmap) and mm.shape == (103, 5) and mm.dtype == np.float32
    np.testing.assert_allclose(mm, f(x).detach().numpy(), rtol=1e-6)
    reopened = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(reopened, mm)
    # bfloat16 features are stored as float32
    bf = km.extract_features(lambda b: b.bfloat16(), x.flatten(1), memmap_path=tmp_path / "b.npy",
                             progress=False)
    assert bf.dtype == np.float32
    # and the memmap feeds the seeding directly
    c = km.kmeans_plusplus(reopened, 4, seed=0)
    assert c.shape == (4, 5)


@pytest.mark.parametrize("device", DEVICES)
def test_device_and_out_device(device):
    f = _model().to(device)
    out = km.extract_features(f, _images(), progress=False)  # runs on f's device
    assert out.device.type == "cpu"
    out = km.extract_features(f, _images(), out_device=None, progress=False)
    assert out.device.type == device


def test_progress_bar_does_not_break(capsys):
    out = km.extract_features(_model(), _images(), progress=True)
    assert out.shape == (103, 5)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="fn must be callable"):
        km.extract_features(3, _images())
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        km.extract_features(_model(), _images(), batch_size=0)
    with pytest.raises(TypeError, match="data must be a torch Dataset"):
        km.extract_features(_model(), 5)
    with pytest.raises(TypeError, match="fn must return a tensor"):
        km.extract_features(lambda b: b.tolist(), _images(), progress=False)
