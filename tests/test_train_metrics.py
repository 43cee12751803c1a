"""Evaluation metrics with known answers: Hungarian accuracy, NMI, Inception Score, FID, and
the IS/FID network path on a random-init (labelled) stand-in."""
import math

import numpy as np
import pytest
import torch

from kmgan_ext.train import metrics


@pytest.fixture(autouse=True)
def one_thread():
    # 2 OpenMP threads on a loaded 2-core machine spin-wait for seconds per call
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)


def test_cluster_accuracy_matches_clusters_to_classes():
    assert metrics.cluster_accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0
    assert metrics.cluster_accuracy([0, 0, 1, 1], [0, 1, 0, 1]) == 0.5
    # 3 clusters for 2 classes: the best one-to-one matching leaves one cluster unmatched
    assert metrics.cluster_accuracy([0, 0, 0, 1, 1, 1], [0, 0, 2, 1, 1, 1]) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="empty labelling"):
        metrics.cluster_accuracy([], [])


def test_nmi_and_feature_clustering():
    assert metrics.nmi([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    centers = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    feats = centers[labels] + 0.1 * torch.randn(400, 2, generator=g)
    got = metrics.feature_clustering(feats, labels, 4, seed=0)
    assert got == {"acc": 1.0, "nmi": pytest.approx(1.0)}
    collapsed = metrics.feature_clustering(torch.randn(400, 2, generator=g), labels, 4, seed=0)
    assert collapsed["acc"] < 0.4 and collapsed["nmi"] < 0.05


def test_inception_score_known_values():
    uniform = torch.full((100, 10), 0.1)
    assert metrics.inception_score(uniform, splits=5) == (pytest.approx(1.0), pytest.approx(0.0))
    onehot = torch.eye(10).repeat(10, 1)  # confident and all classes equally often
    mean, _ = metrics.inception_score(onehot, splits=1)
    assert mean == pytest.approx(10.0)


def test_frechet_distance_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(5.0, abs=1e-6)
    # N(0, I) vs N(0, 4I) in d dims: Tr(I + 4I - 2 * 2I) = d
    b = 2.0 * torch.randn(200000, 4, generator=g, dtype=torch.float64)
    c = torch.randn(200000, 4, generator=g, dtype=torch.float64)
    assert metrics.frechet_distance(c, b) == pytest.approx(4.0, rel=0.03)


def test_inception_stand_in_is_labelled_and_runs():
    net, label = metrics.build_inception("", "cpu")
    assert "STAND-IN" in label and "not comparable" in label
    imgs = torch.rand(3, 1, 28, 28)  # grayscale is repeated to 3 channels, resized to 299
    feats, probs = metrics.inception_outputs(net, imgs, "cpu")
    assert feats.shape == (3, 2048) and probs.shape == (3, 1000)
    assert torch.allclose(probs.sum(1), torch.ones(3, dtype=torch.float64))
    mean, _ = metrics.inception_score(probs, splits=1)
    p = probs.numpy()  # Eq. 8 written out: exp(mean_x KL(p(y|x) || p(y)))
    kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1)
    assert mean == pytest.approx(float(np.exp(kl.mean())), rel=1e-12)


def test_inception_weights_file_must_be_inception(tmp_path):
    bad = tmp_path / "w.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision inception_v3"):
        metrics.build_inception(str(bad))


def test_class_histogram_and_pca():
    assert metrics.class_histogram(torch.tensor([0, 1, 1, 3]), 4) == [0.25, 0.5, 0.0, 0.25]
    x = torch.randn(50, 5)
    assert metrics.pca2(x).shape == (50, 2)
    assert math.isclose(float(metrics.pca2(x).mean()), 0.0, abs_tol=1e-9)
