"""How much work each mode does: ``--smoke`` (seconds), ``--quick`` (< 5 min), full."""

from __future__ import annotations

import attrs

__all__ = ["Plan", "PLANS"]


@attrs.frozen
class Plan:
    """The sizes, counts and repetitions of one benchmark run."""

    mode: str
    #: MiB of data in a single volume (create/revert/delete against data).
    sizes_mib: tuple[int, ...]
    #: Volumes per group, each holding ``group_volume_mib``.
    group_sizes: tuple[int, ...]
    group_volume_mib: int
    #: Small files in a volume, for backends whose volumes are filesystems.
    file_counts: tuple[int, ...]
    #: Timed rounds per size (largest size listed that is <= the case's).
    rounds_by_size: tuple[tuple[int, int], ...]
    #: MiB overwritten to measure throughput before and after a snapshot.
    write_mib: int
    write_rounds: int
    #: MiB in the volume used for space-per-snapshot, and MiB then overwritten.
    space_mib: int
    space_overwrite_mib: int

    def rounds(self, size_mib: int) -> int:
        chosen = self.rounds_by_size[0][1]
        for threshold, count in self.rounds_by_size:
            if size_mib >= threshold:
                chosen = count
        return chosen


PLANS = {
    "smoke": Plan("smoke", sizes_mib=(0, 2), group_sizes=(1, 2), group_volume_mib=1,
                  file_counts=(0, 20), rounds_by_size=((0, 2),), write_mib=2, write_rounds=1,
                  space_mib=2, space_overwrite_mib=1),
    "quick": Plan("quick", sizes_mib=(0, 100, 1024), group_sizes=(1, 4, 16), group_volume_mib=4,
                  file_counts=(0, 1000, 10000), rounds_by_size=((0, 5), (100, 3), (1024, 2)),
                  write_mib=64, write_rounds=3, space_mib=100, space_overwrite_mib=50),
    "full": Plan("full", sizes_mib=(0, 100, 1024), group_sizes=(1, 4, 16), group_volume_mib=100,
                 file_counts=(0, 1000, 10000, 100000),
                 rounds_by_size=((0, 15), (100, 9), (1024, 5)),
                 write_mib=256, write_rounds=5, space_mib=1024, space_overwrite_mib=256),
}
