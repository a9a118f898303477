"""aelab: the classic autoencoder family in PyTorch, trained, evaluated and compared correctly."""
__version__ = "0.1.0"
