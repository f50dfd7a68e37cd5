"""snaptree's qcow2 backend (entry point ``qcow2``)."""

from .backend import Qcow2Backend
from .layout import active_image

plugin = Qcow2Backend()

__all__ = ["Qcow2Backend", "active_image", "plugin"]
