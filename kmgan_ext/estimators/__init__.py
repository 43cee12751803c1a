"""scikit-learn-compatible estimators computed by the library's ops (README,
"Estimators for scikit-learn users").

``km.KMeans`` and ``km.MiniBatchKMeans`` take scikit-learn's parameters and give its
attributes and results, so a scikit-learn user changes one import. They call the public ops
only (``km.assign``, ``km.minibatch_update_``, ``km.kmeans_plusplus``).
"""
from .kmeans import KMeans
from .minibatch_kmeans import MiniBatchKMeans

__all__ = ["KMeans", "MiniBatchKMeans"]
