"""km.KMeans: scikit-learn's KMeans (Lloyd over all points) on the library's fused ops."""
from __future__ import annotations

import warnings

import torch

from ._base import ConvergenceWarning, EstimatorBase, check_random_state, initial_centers, tolerance
from ._lloyd import lloyd


def _same_clustering(a: torch.Tensor, b: torch.Tensor, k: int) -> bool:
    """scikit-learn's ``_is_same_clustering``: equal up to a permutation of the labels."""
    mapping = torch.full((k,), -1, dtype=torch.int64, device=a.device)
    mapping[a] = b  # any writer wins; if a -> b is a function they all agree
    return bool(torch.equal(mapping[a], b))


class KMeans(EstimatorBase):
    """K-means clustering with scikit-learn's interface and results, computed by kmgan_ext.

    A scikit-learn user changes one import: ``from kmgan_ext import KMeans``. Parameters,
    fitted attributes and methods are scikit-learn's (1.x); the algorithm is its Lloyd
    (``algorithm="elkan"`` is accepted and runs Lloyd, which gives the same result): per
    iteration the fused ``km.assign`` (exact float64 argmin, ties to the lowest index) and
    the per-cluster means of the segmented-sum kernels; empty clusters are relocated as
    scikit-learn does. Given the same initial centers the labels and centers are
    scikit-learn's to float tolerance.

    Args (scikit-learn's):
        n_clusters: K (default 8).
        init: "k-means++" (greedy, over all rows: ``km.kmeans_plusplus``), "random" (K rows
            drawn as scikit-learn draws them), an array (K, d), or a callable
            ``init(X, n_clusters, random_state=rs) -> (K, d)``.
        n_init: runs with different seeds, the lowest inertia kept; "auto" = 1 for
            "k-means++" and arrays, 10 for "random" and callables.
        max_iter, tol: Lloyd stops when the squared shift of all centers is <= tol times the
            mean variance of the features, or when no label changes.
        verbose, random_state (None = fresh randomness, int = reproducible, RandomState,
            np.random.Generator or torch.Generator = used and advanced), copy_x (X is never
            modified here), algorithm ("lloyd" or "elkan").
    Args (ours):
        device: where to compute (None = where X is; numpy data is on the CPU).
        dtype: torch.float32 / torch.float64 (None = float64 for float64 data, else float32).
        backend: of the ops ("auto", "reference", "cpu", "triton", "cuda").
        metric: "euclidean" or "cosine" (spherical k-means: k-means++ on the sphere, labels
            by the largest cosine similarity, unit centers = the renormalised sums of the
            normalised rows, inertia = sum of 2 - 2 cos, ``transform`` = sqrt(2 - 2 cos);
            sample_weight is not supported with it yet).
        deterministic: bitwise-reproducible sums on a GPU (the CPU always is).

    Fitted attributes: ``cluster_centers_`` (K, d), ``labels_`` (N,), ``inertia_``,
    ``n_iter_``, ``n_features_in_`` -- numpy for numpy X (labels int32, as scikit-learn),
    torch tensors on X's device for torch X (labels int64).

    ``sample_weight`` (fit, predict, score): weighted means and inertia as scikit-learn's;
    k-means++ and "random" draw with probability proportional to the weights.
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        verbose=0,
        random_state=None,
        copy_x=True,
        algorithm="lloyd",
        device=None,
        dtype=None,
        backend="auto",
        metric="euclidean",
        deterministic=False,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.metric = metric
        self.deterministic = deterministic

    def fit(self, X, y=None, sample_weight=None):
        """Compute k-means clustering of X (n_samples, n_features); returns self."""
        self._check_common_params()
        if self.algorithm not in ("lloyd", "elkan"):
            raise ValueError(f"algorithm must be 'lloyd' or 'elkan', got {self.algorithm!r}")
        x = self._data(X)
        if x.shape[0] < self.n_clusters:
            raise ValueError(f"n_samples={x.shape[0]} should be >= n_clusters={self.n_clusters}.")
        w = self._weights(sample_weight, x)
        n_init = self._n_init_for(default=10)
        tol = tolerance(x, self.tol)
        rs = check_random_state(self.random_state)

        best = None
        for run in range(n_init):
            c0 = initial_centers(self, x if x.chunked else x.x, w, rs, X)
            if self.verbose:
                print("Initialization complete")
            labels, inertia, centers, n_iter = lloyd(
                x, w, c0, max_iter=self.max_iter, tol=tol, verbose=self.verbose,
                deterministic=self.deterministic, backend=self.backend, metric=self.metric,
                desc=f"KMeans init {run + 1}/{n_init}",
            )
            # scikit-learn's rule: a lower inertia replaces the best run unless it is the
            # same clustering (which guards against float noise between equal solutions)
            if best is None or (inertia < best[1] and not _same_clustering(labels, best[0], self.n_clusters)):
                best = (labels, inertia, centers, n_iter)
        labels, inertia, centers, n_iter = best

        distinct = int(torch.unique(labels).numel())
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than n_clusters "
                f"({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self._dtype, self._device = x.dtype, x.device
        self._remember_io(X)
        self.n_features_in_ = x.shape[1]
        self.cluster_centers_ = self._out(centers)
        self.labels_ = self._labels_out(labels)
        self.inertia_ = inertia
        self.n_iter_ = n_iter
        self._n_features_out = self.n_clusters
        return self
