"""A few training steps of every model and every dataset kind, on tiny data, end to end:
the run folder, the center bookkeeping, the figures and the summary."""
import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch

from kmgan_ext.train.checkpoint import newest_good

import kmgan_ext as km
from kmgan_ext.train import load_config, train
from kmgan_ext.train.data import DataNotFound, load_train_data, make_synthetic, read_idx

# Small enough for 2 CPU cores: a few steps each.
TINY = {
    "n_train": 256,
    "batch_size": 32,
    "fake_pool": 128,
    "feature_batch": 128,
    "progress": False,
    "threads": 1,
    "log_every": 1,
}


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def _hungarian(y, pred):
    """Best one-to-one cluster -> class matching accuracy, written here (scipy's assignment)."""
    from scipy.optimize import linear_sum_assignment

    y, pred = np.asarray(y), np.asarray(pred)
    n = int(max(y.max(), pred.max())) + 1
    w = np.zeros((n, n))
    for a, b in zip(pred, y):
        w[a, b] += 1
    r, c = linear_sum_assignment(-w)
    return w[r, c].sum() / len(y)


def _rescore(out):
    """The summary's clustering scores recomputed from the run's last checkpoint: D's features
    of the evaluated rows, scikit-learn KMeans / nearest real center, Hungarian and NMI."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from kmgan_ext.train import Trainer

    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    tr = Trainer(cfg, out, resume=True)
    order = tr.feature_order(len(tr.data), 11)
    if cfg["eval_samples"]:
        order = order[: cfg["eval_samples"]]
    feats = tr.dataset_features(tr.D_raw.features, order).double()
    y = tr.data.labels[order].numpy()
    k = int(tr.data.labels.max()) + 1
    pred = KMeans(n_clusters=k, n_init=10, random_state=cfg["seed"]).fit_predict(feats.numpy())
    got = {"feature_acc": _hungarian(y, pred), "feature_nmi": normalized_mutual_info_score(y, pred)}
    if tr.C_real is not None and cfg["model"] != "reduced":
        near = torch.cdist(feats, tr.C_real.double()).argmin(1).numpy()
        got["center_acc"] = _hungarian(y, near)
        got["center_nmi"] = normalized_mutual_info_score(y, near)
    return got


def _assert_scores(out, s):
    for key, value in _rescore(out).items():
        assert s[key] == pytest.approx(value, abs=1e-12), key


def _check_run_folder(out, summary, steps):
    for name in ("config.json", "metrics.jsonl", "summary.json", os.path.join("checkpoints", f"step-{steps:08d}.pt")):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tensorboard")))
    for key in ("model", "dataset", "epochs", "steps", "seconds", "world_size"):
        assert key in summary, key
    assert summary["steps"] == steps and summary["world_size"] == 1
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["steps"] == steps
    logged = [r for r in _lines(os.path.join(out, "metrics.jsonl")) if "L_D" in r]
    assert [r["step"] for r in logged] == list(range(1, steps + 1))
    assert all(np.isfinite(r["L_D"]) and np.isfinite(r["L_G"]) for r in logged)
    return logged


# --------------------------------------------------------------------------- synthetic data
def test_synthetic_set_is_section_4_1():
    x, y, h = make_synthetic()
    assert x.shape == (10000, 100) and h.shape == (10000, 2)
    assert torch.bincount(y).tolist() == [2500] * 4
    assert 0 < float(x.min()) and float(x.max()) < 1  # FC 100 Sigmoid
    x2, _, _ = make_synthetic()
    assert torch.equal(x, x2)  # fixed seed


@pytest.mark.parametrize("model", ["kmgan", "dcgan", "reduced", "generalized"])
def test_each_model_trains_a_few_steps(tmp_path, model):
    steps = 5
    cfg = load_config("synthetic", {**TINY, "model": model, "max_steps": steps, "lambda": 0.5, "clip": 0.5})
    s = train(cfg, str(tmp_path))
    logged = _check_run_folder(str(tmp_path), s, steps)
    assert s["status"] == "max_steps"
    _assert_scores(str(tmp_path), s)  # the scores of the final D, not just numbers in [0, 1]
    state = torch.load(newest_good(str(tmp_path / "checkpoints")), weights_only=False)
    c = state["centers"]
    if model == "dcgan":
        assert c["real"] is None and "L_center" not in logged[0]
        return
    # every iteration feeds one batch (of real rows) into the real centers
    assert int(c["real_counts"].sum()) == steps * TINY["batch_size"]
    if model == "reduced":
        assert c["real"].shape == (4, 100) and c["fake"] is None  # pixel space
        assert s["center_space"] == "pixels"
    else:
        assert c["real"].shape == c["fake"].shape == (4, 2)
        assert int(c["fake_counts"].sum()) == steps * TINY["batch_size"]
    # weight clipping after every D update
    for name, p in state["D"].items():
        if p.is_floating_point() and "running" not in name:
            assert float(p.abs().max()) <= 0.5 + 1e-7, name
    if model == "generalized":
        assert "L_intra" in logged[0] and "L_inter" in logged[0]
    assert os.path.isfile(tmp_path / "figures" / "features.png")


def test_d_round_steps_runs_the_center_loss_for_the_first_iterations(tmp_path):
    cfg = load_config("synthetic", {**TINY, "max_steps": 5, "d_round": 2, "d_round_mode": "steps", "tensorboard": False})
    train(cfg, str(tmp_path))
    flags = [r["center_step"] for r in _lines(tmp_path / "metrics.jsonl") if "center_step" in r]
    assert flags == [True, True, False, False, False]


def test_d_round_floor(tmp_path):
    cfg = load_config("synthetic", {**TINY, "max_steps": 3, "d_round": 1e6, "d_round_mode": "floor", "tensorboard": False})
    train(cfg, str(tmp_path))
    flags = [r["center_step"] for r in _lines(tmp_path / "metrics.jsonl") if "center_step" in r]
    assert flags == [False] * 3  # an L1 of sigmoid features never reaches 1e6


@pytest.mark.parametrize("prior", ["gm_static", "gm_dynamic"])
def test_gm_gan_priors(tmp_path, prior):
    cfg = load_config("synthetic", {**TINY, "max_steps": 3, "prior": prior, "tensorboard": False})
    train(cfg, str(tmp_path))
    g = torch.load(newest_good(str(tmp_path / "checkpoints")), weights_only=False)["G"]
    mu = g["prior.mu"]
    assert mu.shape == (4, 100) and float(mu.abs().max()) <= 0.1 + 1e-3  # U[-c, c], c = 0.1 (+ 3 Adam steps)
    if prior == "gm_dynamic":
        a = g["prior.A"]
        eye = (0.15**0.5) * torch.eye(100).expand(4, 100, 100)
        assert not torch.equal(a, eye)  # learned with G
    else:
        assert "prior.A" not in g


def test_reuse_features_option(tmp_path):
    cfg = load_config("synthetic", {**TINY, "max_steps": 3, "reuse_features": True, "tensorboard": False})
    assert train(cfg, str(tmp_path))["steps"] == 3


# --------------------------------------------------------------------------- image data
def _write_idx(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


def _class_images(n, seed):
    """28x28 images whose class (0..9) is a bright horizontal band at row 2 + 2.5 * class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 40, size=(n, 28, 28))
    for i, c in enumerate(y):
        r = int(2 + 2.5 * c)
        x[i, r : r + 3, :] = 230
    return x.astype(np.uint8), y.astype(np.uint8)


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    for split, n, seed in (("train", 96, 0), ("t10k", 40, 1)):
        x, y = _class_images(n, seed)
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", x)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", y)
    return str(root)


def test_idx_reader(idx_root):
    x = read_idx(os.path.join(idx_root, "train-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(idx_root, "train-labels-idx1-ubyte.gz"))
    assert x.shape == (96, 28, 28) and y.shape == (96,)
    assert np.array_equal(y, np.arange(96) % 10)


IMG = {**TINY, "n_train": 0, "batch_size": 16, "fake_pool": 32, "feature_batch": 64, "log_every": 2}


@pytest.fixture(scope="module")
def fashion_runs(idx_root, tmp_path_factory):
    """One epoch of KM-GAN and DCGAN on the idx sample, with the Fig. 5c histogram."""
    runs = {}
    for model in ("kmgan", "dcgan"):
        out = str(tmp_path_factory.mktemp(f"fashion_{model}"))
        cfg = load_config("fashion", {
            **IMG, "model": model, "data_root": idx_root, "epochs": 1, "hist_samples": 40, "n_train": 32,
            "classifier_epochs": 2, "classifier_n_train": 0, "eval_samples": 0,
        })  # fmt: skip
        runs[model] = (out, train(cfg, out))
    return runs


def test_fashion_idx_run_with_class_histogram(fashion_runs, idx_root):
    out, s = fashion_runs["kmgan"]
    assert s["dataset"] == "fashion" and s["n_train"] == 32  # a subset of train + t10k (136 rows)
    assert s["status"] == "finished" and s["epochs"] == 1 and s["steps"] == 32 // 16
    _assert_scores(out, s)
    h = s["class_histogram"]
    # the classifier's stated test accuracy and the histogram, recomputed from the saved
    # classifier on the 40 t10k images and on the run's generated images
    from kmgan_ext.train.data import load_idx_split
    from kmgan_ext.train.evaluate import generate_images
    from kmgan_ext.train.fig5c import load_generator
    from kmgan_ext.train.metrics import SmallCNN

    clf = SmallCNN(1, 10)
    clf.load_state_dict(torch.load(os.path.join(out, "classifier.pt"), weights_only=False)["model"])
    clf.eval()
    x_te, y_te = load_idx_split("fashion", idx_root, "test")
    with torch.no_grad():
        acc = float((clf(x_te.float() / 255.0).argmax(1) == y_te).double().mean())
    assert h["classifier"]["test_acc"] == pytest.approx(acc, abs=1e-7) and h["classifier"]["n_test"] == 40
    G, cfg = load_generator(out, "cpu")
    imgs = generate_images(G, cfg, 40, cfg["seed"] + 61, torch.device("cpu"))
    with torch.no_grad():
        counts = torch.bincount(clf(imgs).argmax(1), minlength=10).double() / 40
    assert list(h["fractions"].values()) == pytest.approx(counts.tolist(), abs=1e-12)
    for name in ("class_histogram.png", "interpolation.png"):
        assert os.path.getsize(os.path.join(out, "figures", name)) > 0
    assert os.path.isfile(os.path.join(out, "samples", "epoch_0001.png"))
    assert os.path.isfile(os.path.join(out, "classifier.pt"))


def test_reproduce_fashion_fig5c(idx_root, tmp_path, capsys):
    """`reproduce fashion` on the idx sample: both models, one classifier, the histograms and
    their distance from uniform; a second call retrains nothing."""
    from kmgan_ext.train import reproduce

    out = tmp_path / "fashion"
    argv = ["fashion", "--out", str(out), "--epochs", "1", "--samples", "30", "--classifier-epochs", "1",
            "--data-root", idx_root, "--set", "n_train=32", "--set", "batch_size=16", "--set", "fake_pool=32",
            "--set", "feature_batch=64", "--set", "threads=1", "--set", "device=cpu", "--set", "interpolation=false"]  # fmt: skip
    assert reproduce.main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["histograms"]) == {"kmgan", "dcgan"} and rep["n_generated"] == 30
    for m, h in rep["histograms"].items():
        fr = list(h["fractions"].values())
        assert abs(sum(fr) - 1.0) < 1e-9 and h["max_share"] == max(fr) and h["min_share"] == min(fr)
        assert rep["budget"][m] == {**rep["budget"][m], "epochs": 1, "steps": 2, "images_seen": 32, "n_train": 32}
    assert rep["classifier"]["n_test"] == 40 and (out / rep["figure"]).stat().st_size > 0
    assert "test accuracy" in (out / "REPORT.md").read_text()
    stamp = os.path.getmtime(out / "runs" / "kmgan" / "summary.json")
    assert reproduce.main(argv) == 0
    assert os.path.getmtime(out / "runs" / "kmgan" / "summary.json") == stamp


def test_mnist_idx_from_data_root(idx_root, tmp_path):
    cfg = load_config("mnist", {**IMG, "data_root": idx_root, "max_steps": 2, "model": "reduced", "k": 4,
                                "n_train": 0, "tensorboard": False})  # fmt: skip
    s = train(cfg, str(tmp_path))
    assert s["dataset"] == "mnist" and s["n_train"] == 136 and s["steps"] == 2 and "center_acc" in s


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataNotFound, match="data_root"):
        load_train_data(load_config("mnist", {"data_root": str(tmp_path)}))
    with pytest.raises(DataNotFound, match="cifar-10-batches-py"):
        load_train_data(load_config("cifar10", {"data_root": str(tmp_path)}))
    with pytest.raises(DataNotFound, match="img_align_celeba"):
        load_train_data(load_config("celeba", {"data_root": str(tmp_path)}))


def _write_pngs(folder, n, seed, color):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.clip(rng.normal(color, 30, size=(20, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, f"{i:03d}.png"))


def test_imagefolder_table7(tmp_path):
    _write_pngs(tmp_path / "imgs" / "dark", 12, 0, 40)
    _write_pngs(tmp_path / "imgs" / "bright", 12, 1, 210)
    cfg = load_config("celeba", {
        **IMG, "dataset": "imagefolder", "data_root": str(tmp_path / "imgs"), "image_size": 16, "k": 2,
        "batch_size": 8, "epochs": 1, "eval_fid": False, "tensorboard": False,
    })  # fmt: skip
    s = train(cfg, str(tmp_path / "run"))
    assert s["status"] == "finished" and s["steps"] == 3 and s["model"] == "generalized"
    _assert_scores(str(tmp_path / "run"), s)
    grid = tmp_path / "run" / "samples" / "epoch_0001.png"
    assert grid.is_file()


def test_celeba_flat_folder_with_inception_stand_in(tmp_path, monkeypatch):
    _write_pngs(tmp_path / "celeba" / "img_align_celeba", 16, 2, 128)
    cfg = load_config("celeba", {
        **IMG, "data_root": str(tmp_path), "image_size": 16, "k": 2, "batch_size": 8, "epochs": 1,
        "eval_fid": False, "eval_is": True, "inception_samples": 20, "tensorboard": False,
    })  # fmt: skip
    from kmgan_ext.train import metrics

    seen = []
    real = metrics.inception_outputs

    def record(*a, **k):
        seen.append(real(*a, **k))
        return seen[-1]

    monkeypatch.setattr(metrics, "inception_outputs", record)
    s = train(cfg, str(tmp_path / "run"))
    assert "feature_acc" not in s  # CelebA has no labels
    inc = s["inception"]
    assert "STAND-IN" in inc["backbone"] and "not comparable" in inc["backbone"]
    # Eq. 8 over 10 splits of 2 images, from the class probabilities the network gave
    p = seen[0][1].numpy()
    scores = []
    for part in np.split(p, 10):
        py = part.mean(0, keepdims=True)
        scores.append(np.exp((part * (np.log(part) - np.log(py))).sum(1).mean()))
    assert inc["inception_score"] == pytest.approx(float(np.mean(scores)), rel=1e-9)
    assert inc["inception_score_std"] == pytest.approx(float(np.std(scores)), rel=1e-6)


def test_amp_and_compile_are_gpu_options(tmp_path):
    cfg = load_config("synthetic", {**TINY, "max_steps": 1, "amp": True, "compile": True, "tensorboard": False})
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.warns(UserWarning, match="amp=true needs a GPU"):
        s = train(cfg, str(tmp_path))
    assert s["steps"] == 1


def test_seeding_uses_the_whole_training_set(tmp_path, monkeypatch):
    seen = []
    real = km.kmeans_plusplus

    def spy(x, k, **kw):
        seen.append(tuple(x.shape))
        return real(x, k, **kw)

    monkeypatch.setattr(km, "kmeans_plusplus", spy)
    cfg = load_config("synthetic", {**TINY, "max_steps": 1, "tensorboard": False})
    train(cfg, str(tmp_path))
    assert seen == [(256, 2), (128, 2)]  # D(X) of all 256 rows, then D(G(z)) of the pool
