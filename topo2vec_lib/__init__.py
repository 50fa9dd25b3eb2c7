"""topo2vec_lib: terrain, labels, patch sampler, networks and evaluation for the topo2vec study."""
__version__ = "0.1.0"
