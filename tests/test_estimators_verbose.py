"""verbose: scikit-learn's per-iteration lines on stdout, a progress on stderr."""
import re

import numpy as np
import pytest

import kmgan_ext as km

sk = pytest.importorskip("sklearn.cluster")

_NUM = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def _data(n=400, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 4
    return means[rng.integers(0, k, n)] + rng.normal(size=(n, d))


def _lines(text):
    """The lines with their numbers taken out, and the numbers."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [_NUM.sub("#", ln) for ln in lines], [float(m.group()) for ln in lines for m in _NUM.finditer(ln)]


@pytest.mark.parametrize("name,kw", [
    ("KMeans", dict(tol=1e-6)),
    ("MiniBatchKMeans", dict(tol=1e-6)),
    ("MiniBatchKMeans", dict(batch_size=50, reassignment_ratio=0.3)),  # reassignment lines
])
def test_verbose_prints_sklearns_lines(capsys, monkeypatch, name, kw):
    monkeypatch.setenv("KMGAN_EXT_PROGRESS", "off")
    x = _data()
    init = x[:3].copy()
    getattr(km, name)(3, init=init, verbose=1, random_state=0, **kw).fit(x)
    got = capsys.readouterr()
    getattr(sk, name)(3, init=init, verbose=1, random_state=0, **kw).fit(x)
    want = capsys.readouterr().out
    assert got.err == ""
    (a, an), (b, bn) = _lines(got.out), _lines(want)
    assert a == b and len(a) > 2
    np.testing.assert_allclose(an, bn, rtol=1e-9)


def test_progress_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("KMGAN_EXT_PROGRESS", "auto")  # capsys is not a TTY: lines
    monkeypatch.setenv("KMGAN_EXT_PROGRESS_INTERVAL", "0")  # every fit counts as long
    x = _data()
    km.KMeans(3, init=x[:3].copy(), verbose=1).fit(x)
    err = capsys.readouterr().err
    assert re.search(r"KMeans init 1/1: \d+/300 it in [\d.]+ s", err), err
    assert "inertia=" in err
    km.MiniBatchKMeans(3, batch_size=50, random_state=0, verbose=1).fit(x)
    err = capsys.readouterr().err
    assert re.search(r"MiniBatchKMeans: \d+/\d+ step in", err), err


def test_progress_bar_on_a_terminal(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setenv("KMGAN_EXT_PROGRESS", "bar")
    x = _data()
    km.KMeans(3, init=x[:3].copy(), verbose=1).fit(x)
    err = capsys.readouterr().err
    assert "KMeans init 1/1" in err and "it/s" in err  # tqdm's bar


def test_quiet_by_default_and_short_fits_print_no_progress(capsys, monkeypatch):
    monkeypatch.delenv("KMGAN_EXT_PROGRESS", raising=False)
    monkeypatch.delenv("KMGAN_EXT_PROGRESS_INTERVAL", raising=False)
    x = _data()
    km.KMeans(3, random_state=0).fit(x)
    km.MiniBatchKMeans(3, batch_size=50, random_state=0).fit(x)
    assert capsys.readouterr() == ("", "")
    km.KMeans(3, random_state=0, verbose=1).fit(x)
    out = capsys.readouterr()
    assert "Iteration 0" in out.out and out.err == ""  # a short fit: no progress line
