"""A description of the machine a benchmark ran on, for the results."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

from .storage import fs_type, has_device_mapper

__all__ = ["describe_machine"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _tool_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def describe_machine(workdir: str) -> dict:
    """CPU, cores, RAM, kernel, the scratch filesystem and tool versions."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
        "workdir": workdir,
        "workdir_filesystem": fs_type(workdir),
        "root": os.geteuid() == 0,
        "device_mapper": has_device_mapper(),
        "tools": {name: _tool_version(argv) for name, argv in {
            "qemu-img": ["qemu-img", "--version"],
            "btrfs": ["btrfs", "--version"],
            "snapper": ["snapper", "--version"],
            "lvm": ["lvm", "version"],
        }.items()},
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as release:
            for line in release:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()
