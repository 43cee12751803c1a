"""Run inside a fresh environment where only the kmgan_ext wheel, torch and the declared
dependencies are installed (tests/wheel/check_wheel.py makes it): every public op once on CPU
against the reference backend, the optional-dependency messages, the console entry points.

    python smoke.py [--train]    (from a folder outside the source tree)

--train: the environment has kmgan_ext[train]: skip the ops, check the messages and commands.
Prints one line per check; exits non-zero on the first failure.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import os
import subprocess
import sys
import tempfile

import torch

import kmgan_ext as km
from kmgan_ext import _optional

TRAIN = "--train" in sys.argv[1:]
REPO = os.environ.get("KMGAN_EXT_SOURCE_TREE")


def say(text: str) -> None:
    print(f"  ok  {text}", flush=True)


def where() -> None:
    path = os.path.dirname(os.path.abspath(km.__file__))
    if REPO and os.path.commonpath([path, os.path.abspath(REPO)]) == os.path.abspath(REPO):
        raise SystemExit(f"kmgan_ext was imported from the source tree ({path}), not the wheel")
    if not (path.endswith(os.path.join("site-packages", "kmgan_ext"))):
        raise SystemExit(f"kmgan_ext imported from {path}, not an installed site-packages")
    why = km.available_backends()["cpu"]
    if why is not None:
        raise SystemExit(f"the wheel's C++ kernels do not load: {why}")
    say(f"import kmgan_ext {km.__version__} from {path} (torch {torch.__version__}); cpu backend usable")


def same(name: str, make, call, outputs=None) -> None:
    """``call(backend, *make())`` with backend "cpu" and "reference" agree (results and the
    tensors written in place)."""
    torch.manual_seed(0)
    args = make()
    got_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    ref_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    got = call("cpu", *got_args)
    ref = call("reference", *ref_args)
    got_all = (got if isinstance(got, tuple) else (got,)) + tuple(got_args)
    ref_all = (ref if isinstance(ref, tuple) else (ref,)) + tuple(ref_args)
    for g, r in zip(got_all, ref_all):
        if isinstance(g, torch.Tensor):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")
    say(f"{name}: cpu == reference")


def ops() -> None:
    n, k, d = 200, 7, 16

    def xc():
        return torch.randn(n, d), torch.randn(k, d)

    same("assign", xc, lambda b, x, c: km.assign(x, c, backend=b))

    def update_args():
        x, c = xc()
        return c, torch.randint(0, 5, (k,)), x, torch.randint(0, k, (n,))

    same("minibatch_update_", update_args, lambda b, *a: km.minibatch_update_(*a, backend=b))
    same("minibatch_step_", lambda: update_args()[:3], lambda b, *a: km.minibatch_step_(*a, backend=b))

    params = inspect.signature(km.ema_update_).parameters
    if "cluster_size" in params:  # ema_update_(centers, cluster_size, embed_sum, x, labels)
        def ema_args():
            x, c = xc()
            return c, torch.rand(k), torch.randn(k, d), x, torch.randint(0, k, (n,))

        same("ema_update_", ema_args, lambda b, *a: km.ema_update_(*a, decay=0.9, backend=b))
    else:  # ema_update_(centers, x, labels, decay)
        def ema_args():
            x, c = xc()
            return c, x, torch.randint(0, k, (n,))

        same("ema_update_", ema_args, lambda b, *a: km.ema_update_(*a, 0.9, backend=b))

    def loss_args():
        xr, cr = xc()
        xf, cf = xc()
        return xr, torch.randint(0, k, (n,)), cr, xf, torch.randint(0, k, (n,)), cf

    same("center_loss", loss_args, lambda b, *a: km.center_loss(*a, backend=b))
    same("assigned_distance", lambda: update_args()[2:] + (torch.randn(k, d),),
         lambda b, x, l, c: km.assigned_distance(x, l, c, backend=b))  # fmt: skip
    same("pairwise_l1", lambda: (torch.randn(50, d), torch.randn(40, d)), lambda b, a, c: km.pairwise_l1(a, c, backend=b))
    same("kmgan_losses", lambda: (torch.randn(n, d), torch.randn(n, d), torch.randn(k, d), torch.randn(k, d)),
         lambda b, *a: tuple(km.kmgan_losses(*a, backend=b)))  # fmt: skip

    x = torch.randn(500, 8)
    r = km.kmeans(x, 4, niter=3)
    assert r.centers.shape == (4, 8) and r.labels.shape == (500,), r
    c = km.kmeans_plusplus(x, 4)
    assert c.shape == (4, 8), c.shape
    c = km.kmeans_parallel(x, 4)
    assert c.shape == (4, 8), c.shape
    say("kmeans, kmeans_plusplus, kmeans_parallel (torch backend; faiss is not installed)")

    labels = km.MiniBatchKMeansModule(4, update="always")(x)  # seeds itself, then updates
    assert labels.shape == (500,), labels.shape
    # the estimators work without scikit-learn (not a dependency of the base install)
    est = km.KMeans(n_clusters=4, n_init=1, max_iter=5, random_state=0).fit(x.numpy())
    assert est.cluster_centers_.shape == (4, 8) and est.labels_.shape == (500,), est
    mbk = km.MiniBatchKMeans(n_clusters=4, batch_size=100, random_state=0).fit(x)
    assert tuple(mbk.cluster_centers_.shape) == (4, 8), mbk.cluster_centers_.shape
    vq = km.VectorQuantizer(16, 8)
    out = vq(torch.randn(2, 10, 8, requires_grad=True))
    assert out.quantized.shape == (2, 10, 8), out.quantized.shape
    loss = km.CenterLoss(5, 8)(torch.randn(20, 8), torch.randint(0, 5, (20,)))
    assert loss.dim() == 0 and bool(torch.isfinite(loss)), loss
    say("KMeans, MiniBatchKMeans (estimators), MiniBatchKMeansModule, VectorQuantizer, CenterLoss")
    terms = km.KMGANLosses()(torch.randn(n, d), torch.randn(n, d), torch.randn(k, d), torch.randn(k, d))
    floats = [t for t in terms if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert floats and all(bool(torch.isfinite(t).all()) for t in floats), terms
    say("KMGANLosses")

    net = torch.nn.Linear(8, 3)
    for progress in (False, True):  # tqdm is not a dependency: neither may need it
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            f = km.extract_features(net, x, batch_size=128, progress=progress)
        assert f.shape == (500, 3), f.shape
    say("extract_features with progress=False and progress=True (no tqdm needed)")


def optional_messages() -> None:
    for module, extra in (("tqdm", "train"), ("faiss", "faiss"), ("matplotlib", "train"), ("sklearn", "train")):
        present = importlib.util.find_spec(module) is not None
        if present:
            if not TRAIN or extra != "train":
                raise SystemExit(f"{module} is installed in an environment that should not have it")
            continue
        try:
            _optional.require(module, extra=extra)
        except ImportError as e:
            if f"kmgan_ext[{extra}]" not in str(e):
                raise SystemExit(f"the error for a missing {module} does not name kmgan_ext[{extra}]: {e}")
        else:
            raise SystemExit(f"require({module!r}) did not raise")
    try:
        km.kmeans(torch.randn(50, 4), 2, backend="faiss")
    except RuntimeError as e:
        assert "kmgan_ext[faiss]" in str(e), e
    else:
        raise SystemExit("kmeans(backend='faiss') ran without faiss")
    if not TRAIN:
        from kmgan_ext.train import train

        with tempfile.TemporaryDirectory() as out:
            try:
                train("synthetic", out, {"max_steps": 1})
            except ImportError as e:
                assert "kmgan_ext[train]" in str(e), e
            else:
                raise SystemExit("the trainer ran without the [train] extra")
    say("missing optional packages fail with the pip extra to install" + (" (train extra present)" if TRAIN else ""))


def commands() -> None:
    bindir = os.path.dirname(sys.executable)
    for cmd in ([os.path.join(bindir, "kmgan-train"), "--list"], [os.path.join(bindir, "kmgan-reproduce"), "--help"],
                [sys.executable, "-m", "kmgan_ext"]):
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        text = out.stdout
        if cmd[-1] == "kmgan_ext":
            assert "cpu_kernels" in text and km.__version__ in text, text
        else:
            assert "synthetic" in text, text
        say(f"{os.path.basename(cmd[0])} {' '.join(cmd[1:])}: {len(text.splitlines())} lines")


if __name__ == "__main__":
    where()
    if not TRAIN:  # the extras add no op code: once is enough
        ops()
    optional_messages()
    commands()
