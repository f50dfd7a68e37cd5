"""snaptree's lvm backend (entry point ``lvm``): thick and thin LVM snapshots."""

from .backend import LvmBackend

plugin = LvmBackend()

__all__ = ["LvmBackend", "plugin"]
