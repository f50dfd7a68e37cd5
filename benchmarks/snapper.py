"""snapper as a comparator on btrfs subvolumes.

Each volume gets a temporary snapper config (``snapper -c NAME
create-config PATH``), made on first use and removed by :meth:`release`.
``--no-dbus`` makes snapper work on the files itself, as it does without a
running snapperd; revert is ``undochange N..0``, snapper's way back.
"""

from __future__ import annotations

import os
import shutil

from .provision import BenchVolume
from .storage import run

__all__ = ["Snapper"]


class Snapper:
    """snapper create / undochange / delete on one subvolume."""

    label = "snapper"

    def __init__(self) -> None:
        #: volume spec -> (config name, {tag: snapper number})
        self.configs: dict[str, tuple[str, dict[str, str]]] = {}

    @staticmethod
    def unavailable() -> str | None:
        if shutil.which("snapper") is None:
            return "snapper is not installed"
        if not os.path.isdir("/etc/snapper/configs"):
            return "snapper has no /etc/snapper/configs"
        return None

    def _config(self, volume: BenchVolume) -> tuple[str, dict[str, str]]:
        if volume.spec not in self.configs:
            name = f"snaptree-bench-{os.getpid()}-{len(self.configs)}"
            run(["snapper", "--no-dbus", "-c", name, "create-config", volume.data["subvolume"]])
            self.configs[volume.spec] = (name, {})
        return self.configs[volume.spec]

    def create(self, volume: BenchVolume, tag: str) -> None:
        name, numbers = self._config(volume)
        numbers[tag] = run(["snapper", "--no-dbus", "-c", name, "create", "-p"]).strip()

    def revert(self, volume: BenchVolume, tag: str) -> None:
        name, numbers = self._config(volume)
        run(["snapper", "--no-dbus", "-c", name, "undochange", f"{numbers[tag]}..0"])

    def delete(self, volume: BenchVolume, tag: str) -> None:
        name, numbers = self._config(volume)
        run(["snapper", "--no-dbus", "-c", name, "delete", numbers.pop(tag)])

    def release(self, volume: BenchVolume) -> None:
        """Drop the volume's config and its snapshots (``.snapshots`` too)."""
        entry = self.configs.pop(volume.spec, None)
        if entry is not None:
            run(["snapper", "--no-dbus", "-c", entry[0], "delete-config"])
