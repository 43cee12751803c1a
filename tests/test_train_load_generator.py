"""fig5c.load_generator rebuilds the generator of a run of any model family from its folder
(config.json + newest checkpoint): the images it generates are the trained G's, bitwise."""
import pytest
import torch

from kmgan_ext.train import Trainer, load_config
from kmgan_ext.train.evaluate import generate_images
from kmgan_ext.train.fig5c import load_generator

TINY = {"n_train": 64, "batch_size": 16, "feature_batch": 64, "fake_pool": 64, "progress": False, "threads": 1,
        "device": "cpu", "tensorboard": False, "max_steps": 2, "eval_samples": 32, "sample_every": 0,
        "gm_cluster_samples": 16, "gm_cluster_epochs": 1, "interpolation": False}  # fmt: skip
FAMILIES = {
    "slcgan": {"model": "slcgan"},  # G(z, c): conditional batch norms, spectral norm
    "gmgan": {"model": "gmgan", "prior": "gm_dynamic"},  # a learned mixture prior inside G
    "kmgan": {"model": "kmgan", "d_round": 1},
    "dcgan": {"model": "dcgan"},
}


# the image runs are what Fig. 5c loads; the vector runs check the model's input shape
@pytest.mark.parametrize("model, dataset", [("slcgan", "mnist5k"), ("slcgan", "synthetic"), ("gmgan", "mnist5k"),
                                            ("gmgan", "synthetic"), ("kmgan", "synthetic"), ("dcgan", "mnist5k")])
def test_load_generator_rebuilds_the_trained_generator(tmp_path, model, dataset):
    tr = Trainer(load_config("synthetic", {**TINY, **FAMILIES[model], "dataset": dataset}), str(tmp_path))
    tr.run()
    want = generate_images(tr.G_raw, tr.cfg, 24, 5, torch.device("cpu"))
    G, cfg = load_generator(str(tmp_path), "cpu")
    assert cfg["model"] == model and type(G) is type(tr.G_raw)
    got = generate_images(G, cfg, 24, 5, torch.device("cpu"))
    assert got.shape == want.shape and torch.equal(got, want)
