"""Seeding over full datasets (docs/ops.md, Seeding).

* :func:`extract_features` — a model over a whole dataset, in chunks, into (N, d) or a memmap;
* :func:`kmeans_plusplus` — greedy k-means++ over all N rows (torch or faiss distances);
* :func:`kmeans` — k-means++ then Lloyd (faiss.Kmeans, or torch), no silent subsampling;
* :func:`kmeans_parallel` — k-means|| over the shards of a torch.distributed group.

Inputs are torch tensors (any device) or numpy arrays, np.memmap included, read in chunks.
"""
from .features import extract_features
from .kmeans import KMeansResult, kmeans
from .kmeans_parallel import kmeans_parallel
from .kmeans_plusplus import kmeans_plusplus

__all__ = ["extract_features", "kmeans_plusplus", "kmeans", "KMeansResult", "kmeans_parallel"]
