"""mtqa's version: a module that imports nothing, so any module can read it in any order."""

__all__ = ["__version__"]

__version__ = "0.1.0"
