"""nn.Modules for training loops, one floor above the ops (README,
"Modules for training loops").

* :class:`MiniBatchKMeansModule` -- mini-batch k-means centers as buffers (DDP-synchronised);
* :class:`VectorQuantizer` -- the VQ-VAE codebook (straight-through, commitment, EMA);
* :class:`CenterLoss` -- Wen et al.'s face-recognition center loss.

They call the public ops only; whether a forward updates state is always a visible choice.
"""
from .center_loss import CenterLoss
from .minibatch_kmeans_module import LegacyMiniBatchKMeans as MiniBatchKMeans  # deprecated name
from .minibatch_kmeans_module import MiniBatchKMeansModule
from .vector_quantizer import VectorQuantizer, VQOutput

__all__ = ["MiniBatchKMeansModule", "VectorQuantizer", "VQOutput", "CenterLoss"]
