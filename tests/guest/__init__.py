"""Helpers for tests that need a kernel with device-mapper (LVM, kpartx).

``vng`` boots Debian's kernel under virtme-ng over the host's filesystem and
runs pytest inside it; ``lvm_env`` makes loop-backed volume groups there.
"""
