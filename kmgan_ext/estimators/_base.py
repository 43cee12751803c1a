"""What km.KMeans and km.MiniBatchKMeans share: scikit-learn's estimator protocol without
importing scikit-learn, input/output conversion, and the checks of the common parameters.

* They are scikit-learn ``BaseEstimator``s when scikit-learn is installed (clone, pipelines,
  grid searches, ``check_is_fitted``); without it ``get_params``/``set_params``/``repr``
  read the constructor's signature the same way.
* numpy in gives numpy out; torch in gives torch out on the input's device. Float64 and
  float32 data are computed in their own precision (as scikit-learn does); integer and
  16-bit inputs in float32 (``dtype`` overrides both).
* An ``np.memmap`` is read in row chunks (converted chunk by chunk, its mapped pages
  released after use), never whole: ``Data``.
"""
from __future__ import annotations

import inspect
import numbers
import warnings

import numpy as np
import torch
from torch import Tensor

from ..assign import assign
from ..seeding._data import MEMMAP_CHUNK_BYTES, _from_numpy, gather_rows, release_pages

_METRICS = ("euclidean", "cosine")



def is_int(value: object) -> bool:
    """An integer that is not a bool (scikit-learn's Integral check)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int = 1) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

class ConvergenceWarning(UserWarning):
    """scikit-learn's ConvergenceWarning when scikit-learn is installed, else this class."""


try:  # the same warning class scikit-learn users filter on
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[no-redef]  # noqa: F811
except ImportError:  # pragma: no cover - scikit-learn is optional
    pass


def check_random_state(seed) -> np.random.RandomState:
    """scikit-learn's meaning: None = numpy's global RandomState (fresh randomness), an int
    = a new RandomState(seed) (each fit reproducible), a RandomState is used (and advanced)
    as is. A ``np.random.Generator`` is accepted too: it seeds a RandomState from itself, so
    it advances between fits as a RandomState would; so does a ``torch.Generator`` (the
    PyTorch user's generator, on any device)."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if is_int(seed):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.RandomState(int(seed.integers(0, 2**32 - 1)))
    if isinstance(seed, torch.Generator):
        return np.random.RandomState(int(torch.randint(0, 2**32 - 1, (1,), generator=seed,
                                                       device=seed.device)))
    raise ValueError(
        "random_state must be None, an int, a numpy RandomState or Generator, or a "
        f"torch.Generator, got {seed!r}"
    )


class Data:
    """X as an estimator reads it, in the compute dtype on the compute device.

    In memory (a tensor, a numpy array): ``x`` is one tensor, ``chunks()`` yields it once.
    An ``np.memmap``: ``x`` is None and ``chunks()`` yields row chunks of at most
    MEMMAP_CHUNK_BYTES (as float64), each converted on its own and its mapped pages
    released once used, so a memmap larger than memory is never resident at once.
    ``shape``, ``dtype`` and ``device`` read as a tensor's.
    """

    def __init__(self, x: Tensor | None, mm: np.ndarray | None = None, dtype=None, device=None):
        self.x, self.mm = x, mm
        if x is not None:
            self.shape, self.dtype, self.device = tuple(x.shape), x.dtype, x.device
        else:
            self.shape, self.dtype, self.device = tuple(mm.shape), dtype, device
        self.chunk_rows = max(1, MEMMAP_CHUNK_BYTES // max(1, 8 * self.shape[1]))

    @property
    def chunked(self) -> bool:
        return self.x is None

    def _read(self, part: np.ndarray) -> Tensor:
        t = _from_numpy(np.ascontiguousarray(part))
        return t.to(device=self.device, dtype=self.dtype)

    def chunks(self):
        if self.x is not None:
            yield 0, self.x
            return
        for s in range(0, self.shape[0], self.chunk_rows):
            e = min(s + self.chunk_rows, self.shape[0])
            yield s, self._read(self.mm[s:e])
            release_pages(self.mm, s, e)

    def take(self, idx: Tensor) -> Tensor:
        """The rows at idx (a copy for a memmap: only those rows are read)."""
        if self.x is not None:
            return self.x[idx.to(self.x.device)]
        return self._read(gather_rows(self.mm, idx.cpu().numpy(), self.chunk_rows))


def tolerance(x: Tensor | Data, tol: float) -> float:
    """scikit-learn's tol scaling: tol times the mean over features of the data's variance."""
    if tol == 0 or x.shape[0] == 0:
        return 0.0
    if isinstance(x, Tensor) or not x.chunked:
        x = x if isinstance(x, Tensor) else x.x
        return float(torch.var(x.to(torch.float64), dim=0, unbiased=False).mean()) * tol
    # two passes in float64 (mean, then squared deviations): no cancellation
    n = x.shape[0]
    mean = sum(ch.to(torch.float64).sum(0) for _, ch in x.chunks()) / n
    ss = sum(((ch.to(torch.float64) - mean) ** 2).sum(0) for _, ch in x.chunks())
    return float((ss / n).mean()) * tol


class _Protocol:
    """scikit-learn's get_params / set_params / repr, for when scikit-learn is absent."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self")

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {valid!r}."
                )
            setattr(self, key, value)
        return self

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The names of transform's columns, as scikit-learn's: ``kmeans0``, ``kmeans1``..."""
        if not hasattr(self, "cluster_centers_"):
            raise _not_fitted(self)
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self._n_features_out)], dtype=object)

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        changed = []
        for name, p in sig.parameters.items():
            if name == "self":
                continue
            v = getattr(self, name)
            if not (v is p.default or (isinstance(v, str) and v == p.default)):
                changed.append(f"{name}={v!r}")
        return f"{type(self).__name__}({', '.join(changed)})"


try:  # with scikit-learn installed the estimators are its BaseEstimators (tags, clone,
    # pipelines, check_is_fitted, html repr); without it they keep the same protocol
    from sklearn.base import BaseEstimator as _SkBase
    from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin

    # scikit-learn's own order (_BaseKMeans): get_feature_names_out -> ["kmeans0", ...]
    _BASES: tuple = (ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, _SkBase)
except ImportError:  # pragma: no cover - scikit-learn is optional
    _BASES = (_Protocol,)


class EstimatorBase(*_BASES):
    """Input conversion, shared parameter checks and methods of the estimators."""

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "cluster_centers_")

    # ------------------------------------------------------------------ parameter checks
    def _check_common_params(self) -> None:
        check_int("n_clusters", self.n_clusters)
        check_int("max_iter", self.max_iter)
        if not isinstance(self.tol, numbers.Real) or self.tol < 0:
            raise ValueError(f"tol must be a float >= 0, got {self.tol!r}")
        n_init = self.n_init
        if not (n_init == "auto" if isinstance(n_init, str) else
                is_int(n_init) and n_init >= 1):
            raise ValueError(f"n_init must be 'auto' or an int >= 1, got {n_init!r}")
        init = self.init
        if isinstance(init, str):
            if init not in ("k-means++", "random"):
                raise ValueError(
                    f"init must be 'k-means++', 'random', an array of shape (n_clusters, "
                    f"n_features) or a callable, got {init!r}"
                )
        elif not (callable(init) or isinstance(init, (np.ndarray, Tensor, list, tuple))):
            raise ValueError(
                "init must be 'k-means++', 'random', an array of shape (n_clusters, "
                f"n_features) or a callable, got {type(init).__name__}"
            )
        if self.metric not in _METRICS:
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {self.metric!r}")
        if not isinstance(self.deterministic, bool):
            raise TypeError(f"deterministic must be a bool, got {type(self.deterministic).__name__}")
        if self.dtype is not None and self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be None, torch.float32 or torch.float64, got {self.dtype!r}")
        self._device_param()

    def _device_param(self) -> torch.device | None:
        if self.device is None:
            return None
        try:
            return torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must be None or a torch device, got {self.device!r}") from None

    def _n_init_for(self, default: int) -> int:
        """scikit-learn's rule: 'auto' = 1 for k-means++ and an array, ``default`` otherwise;
        an explicit array runs once (with scikit-learn's RuntimeWarning)."""
        explicit_array = not isinstance(self.init, str) and not callable(self.init)
        if self.n_init == "auto":
            n = 1 if (self.init == "k-means++" if isinstance(self.init, str) else explicit_array) else default
        else:
            n = int(self.n_init)
        if explicit_array and n != 1:
            warnings.warn(
                "Explicit initial center position passed: performing only one init in "
                f"{type(self).__name__} instead of n_init={n}.",
                RuntimeWarning,
                stacklevel=3,
            )
            n = 1
        return n

    # ------------------------------------------------------------------ data in / out
    def _compute_dtype(self, data) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        dt = data.dtype
        if dt in (torch.float64, np.float64):
            return torch.float64
        return torch.float32

    def _as_tensor(self, X, *, name: str = "X", fitted: bool = False) -> Tensor:
        """X as a 2-D tensor in the compute dtype on the compute device (no copy when it
        already is one)."""
        if isinstance(X, Tensor):
            t = X.detach()
            if t.device.type == "meta":
                raise ValueError(f"{name} is a meta tensor: it holds no data")
        else:
            arr = np.asarray(X)
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise TypeError(f"{name} must be numeric (a numpy array or torch tensor), got {arr.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}")
        if t.is_complex():
            raise TypeError(f"{name} must be real, got {t.dtype}")
        if fitted:
            dtype, device = self._dtype, self._device
            if t.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"{name} has {t.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
        else:
            dtype = self._compute_dtype(t)
            device = self._device_param() or t.device
        t = t.to(device=device, dtype=dtype)
        if t.shape[0] and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinity")
        return t

    def _data(self, X, *, name: str = "X", fitted: bool = False) -> Data:
        """X as a Data: an np.memmap stays on disk and is read in row chunks (checked in one
        chunked pass); anything else is one tensor (``_as_tensor``)."""
        if not isinstance(X, np.memmap):
            return Data(self._as_tensor(X, name=name, fitted=fitted))
        if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise TypeError(f"{name} must be numeric (a numpy array or torch tensor), got {X.dtype}")
        if np.issubdtype(X.dtype, np.complexfloating):
            raise TypeError(f"{name} must be real, got {X.dtype}")
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
        if fitted:
            if X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"{name} has {X.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
            dtype, device = self._dtype, self._device
        else:
            dtype = self._compute_dtype(X)
            device = torch.device(self.device) if self.device is not None else torch.device("cpu")
        data = Data(None, X, dtype, device)
        for _, ch in data.chunks():
            if ch.numel() and not bool(torch.isfinite(ch).all()):
                raise ValueError(f"{name} contains NaN or infinity")
        return data

    def _weights(self, sample_weight, x: Tensor | Data) -> Tensor | None:
        """None for unit weights, else an (N,) tensor of x's dtype and device."""
        if sample_weight is None:
            return None
        if isinstance(sample_weight, numbers.Number):
            w = torch.full((x.shape[0],), float(sample_weight), dtype=x.dtype, device=x.device)
        else:
            if not isinstance(sample_weight, Tensor):
                sample_weight = np.asarray(sample_weight)
                if not (np.issubdtype(sample_weight.dtype, np.number) or sample_weight.dtype == bool):
                    raise TypeError(f"sample_weight must be numeric, got {sample_weight.dtype}")
            elif sample_weight.device.type == "meta" or sample_weight.is_complex():
                raise TypeError(f"sample_weight must be a real tensor with data, got {sample_weight}")
            w = torch.as_tensor(sample_weight).to(device=x.device, dtype=x.dtype)
        if w.shape != (x.shape[0],):
            raise ValueError(f"sample_weight must have shape ({x.shape[0]},), got {tuple(w.shape)}")
        if x.shape[0] and (not bool(torch.isfinite(w).all()) or bool((w < 0).any())):
            raise ValueError("sample_weight must be finite and non-negative")
        return w

    def _remember_io(self, X) -> None:
        self._torch_io = isinstance(X, Tensor)
        self._out_device = X.device if isinstance(X, Tensor) else None

    def _out(self, t: Tensor, like=None):
        """numpy for numpy callers, torch on the caller's device for torch callers."""
        if like is None:
            torch_out, device = self._torch_io, self._out_device
        else:
            torch_out = isinstance(like, Tensor)
            device = like.device if torch_out else None
        if torch_out:
            return t.to(device)
        return t.cpu().numpy()

    def _labels_out(self, labels: Tensor, like=None):
        out = self._out(labels, like)
        # scikit-learn's labels are int32
        return out.astype(np.int32) if isinstance(out, np.ndarray) else out

    def _centers_tensor(self) -> Tensor:
        """The fitted centers as the ops want them (a user may have set cluster_centers_)."""
        if not hasattr(self, "cluster_centers_"):
            raise _not_fitted(self)
        c = self.cluster_centers_
        c = c.detach() if isinstance(c, Tensor) else torch.from_numpy(np.ascontiguousarray(c))
        return c.to(device=self._device, dtype=self._dtype)

    # ------------------------------------------------------------------ shared methods
    def _labels_inertia(self, x: Tensor | Data, w: Tensor | None, centers: Tensor) -> tuple[Tensor, float]:
        labels, dist2 = assign_all(x, centers, self.backend, self.metric)
        d2 = dist2.to(torch.float64)
        inertia = float((d2 * w.to(torch.float64)).sum() if w is not None else d2.sum())
        return labels, inertia

    def predict(self, X, sample_weight=None):
        """Index (n_samples,) of the nearest center of each row (ties to the lowest index;
        metric="cosine": the largest cosine similarity)."""
        c = self._centers_tensor()
        labels, _ = assign_all(self._data(X, fitted=True), c, self.backend, self.metric)
        return self._labels_out(labels, X)

    def fit_predict(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X):
        """Euclidean distances (n_samples, n_clusters) of every row to every center: the
        requested output is the full matrix here, formed from differences (no cancellation).
        metric="cosine": the distances on the unit sphere, sqrt(2 - 2 cos) (cos 0 for a zero
        row or center), whose squares are assign's dist2."""
        c = self._centers_tensor()
        data = self._data(X, fitted=True)
        rows = max(1, (1 << 24) // max(1, c.shape[0] * max(1, data.shape[1])))
        out = torch.empty(data.shape[0], c.shape[0], dtype=data.dtype, device=data.device)
        if self.metric == "cosine":
            cd = c.to(torch.float64)
            cn = torch.linalg.vector_norm(cd, dim=1)
        for start, x in data.chunks():
            for s in range(0, x.shape[0], rows):
                part = x[s : s + rows]
                e = start + s + part.shape[0]
                if self.metric == "cosine":
                    xd = part.to(torch.float64)
                    den = torch.linalg.vector_norm(xd, dim=1)[:, None] * cn[None, :]
                    cos = torch.where(den == 0, torch.zeros_like(den), (xd @ cd.t()) / torch.where(den == 0, torch.ones_like(den), den))
                    out[start + s : e] = (2.0 - 2.0 * cos).clamp_min(0).sqrt().to(x.dtype)
                else:
                    out[start + s : e] = torch.cdist(
                        part, c, compute_mode="donot_use_mm_for_euclid_dist"
                    )
        return self._out(out, X)

    def fit_transform(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Opposite of X's inertia against the fitted centers (scikit-learn's score)."""
        c = self._centers_tensor()
        x = self._data(X, fitted=True)
        _, inertia = self._labels_inertia(x, self._weights(sample_weight, x), c)
        return -inertia


def _not_fitted(est) -> Exception:
    msg = (f"This {type(est).__name__} instance is not fitted yet. Call 'fit' with "
           "appropriate arguments before using this estimator.")
    try:
        from sklearn.exceptions import NotFittedError

        return NotFittedError(msg)
    except ImportError:  # pragma: no cover
        return AttributeError(msg)


def assign_all(x: Tensor | Data, centers: Tensor, backend: str,
               metric: str = "euclidean") -> tuple[Tensor, Tensor]:
    """km.assign over every row (chunk by chunk for a memmap): (labels (N,), dist2 (N,))."""
    if isinstance(x, Tensor) or not x.chunked:
        return assign(x if isinstance(x, Tensor) else x.x, centers, metric=metric, backend=backend)
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    dist2 = torch.empty(n, dtype=x.dtype, device=x.device)
    for s, ch in x.chunks():
        lab, d2 = assign(ch, centers, metric=metric, backend=backend)
        labels[s : s + ch.shape[0]] = lab
        dist2[s : s + ch.shape[0]] = d2
    return labels, dist2


def initial_centers(est, x: Tensor | Data, w: Tensor | None, rs: np.random.RandomState, X_user) -> Tensor:
    """One initialisation as scikit-learn's ``_init_centroids`` (x already subsampled)."""
    k, n = est.n_clusters, x.shape[0]
    init = est.init
    c = _initial_centers(est, x, w, rs, X_user)
    if est.metric == "cosine":  # spherical k-means: unit centers from the start
        from ..seeding.kmeans_plusplus import unit

        c = unit(c)
    return c


def _initial_centers(est, x: Tensor, w: Tensor | None, rs: np.random.RandomState, X_user) -> Tensor:
    k, n = est.n_clusters, x.shape[0]
    init = est.init
    if isinstance(init, str) and init == "k-means++":
        seed = int(rs.randint(np.iinfo(np.int32).max))
        return _kpp(x, k, seed, w, est)
    if isinstance(init, str) and init == "random":
        seeds = rs.choice(n, size=k, replace=False, p=probabilities(w, x))
        idx = torch.as_tensor(seeds, device=x.device)
        return x.take(idx) if isinstance(x, Data) else x[idx].clone()
    if callable(init):
        if isinstance(x, Data) and x.chunked:
            xu = X_user  # the memmap itself, as scikit-learn passes X
        else:
            xu = x.x if isinstance(x, Data) else x
            xu = xu if isinstance(X_user, Tensor) else xu.cpu().numpy()
        c = init(xu, k, random_state=rs)
    else:
        c = init
    c = c.detach() if isinstance(c, Tensor) else torch.as_tensor(np.asarray(c))
    if c.shape != (k, x.shape[1]):
        raise ValueError(
            f"The shape of the initial centers {tuple(c.shape)} does not match the number "
            f"of clusters {k} and features {x.shape[1]}: expected ({k}, {x.shape[1]})"
        )
    return c.to(device=x.device, dtype=x.dtype).clone()


def probabilities(w: Tensor | None, x: Tensor) -> np.ndarray:
    """scikit-learn's ``sample_weight / sample_weight.sum()`` in x's dtype (unit weights
    included: numpy's choice with p draws a different stream than without)."""
    np_dtype = np.float64 if x.dtype == torch.float64 else np.float32
    wn = np.ones(x.shape[0], dtype=np_dtype) if w is None else w.cpu().numpy().astype(np_dtype)
    return wn / wn.sum()


def _kpp(x: Tensor | Data, k: int, seed: int, w: Tensor | None, est) -> Tensor:
    from ..seeding import kmeans_plusplus

    if isinstance(x, Data) and x.chunked:  # k-means++ reads the memmap in chunks itself
        c = kmeans_plusplus(x.mm, k, seed=seed, sample_weight=w, metric=est.metric)
        return torch.as_tensor(c).to(device=x.device, dtype=x.dtype)
    x = x.x if isinstance(x, Data) else x
    return kmeans_plusplus(x, k, seed=seed, sample_weight=w, metric=est.metric).to(x.dtype)
