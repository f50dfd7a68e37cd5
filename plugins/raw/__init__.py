"""snaptree's raw-image backend (entry point ``raw``)."""

from .backend import RawBackend

plugin = RawBackend()

__all__ = ["RawBackend", "plugin"]
