"""aelab's version: one string, below every module that records it (run folders, --version)."""

__version__ = "0.1.0"
