"""snaptree's btrfs backend (entry point ``btrfs``)."""

from .backend import BtrfsBackend

plugin = BtrfsBackend()

__all__ = ["BtrfsBackend", "plugin"]
