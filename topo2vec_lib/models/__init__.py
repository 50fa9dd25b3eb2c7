"""Models: networks, the embedder interface, the training loop once, checkpoints and one module per method.

The public API is the registry's (:mod:`topo2vec_lib.models.registry`): ``train_model``, ``load_embedder``,
``model_config``, ``MODELS``; and the embedder classes ``Embedder`` and ``Topo2Vec``.
"""
from topo2vec_lib.models.embedder import Embedder
from topo2vec_lib.models.registry import MODELS, load_embedder, model_config, train_model
from topo2vec_lib.models.topo2vec import Topo2Vec

__all__ = ["MODELS", "Embedder", "Topo2Vec", "load_embedder", "model_config", "train_model"]
