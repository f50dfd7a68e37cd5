"""Boot a throwaway virtme-ng guest and run pytest inside it on the same tree.

The guest sees the host's root filesystem read-only (9p) with writable
overlays on /tmp, /etc, /var; one host directory (``out_dir``) is shared
read-write and carries the inner script, its output, a junit XML file and
the exit status back to the host.  KVM is not used (``--disable-kvm``):
nested KVM hangs Debian's 6.1 kernel, and TCG is fast enough for a few
minutes of LVM work.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import attrs

from snaptree.devices import kernel_has_device_mapper as host_has_devmapper

__all__ = ["host_has_devmapper", "find_kernel", "find_vng", "GuestResult", "run_pytest_in_guest",
           "GUEST_MODULES"]

#: File the inner script makes first thing: the guest booted.
STARTED = "started"
#: Seconds a boot may take before it counts as hung (TCG boots take 20-60 s here).
BOOT_TIMEOUT = 300.0
#: Boots tried before giving up.
BOOT_ATTEMPTS = 2
#: Kernel modules the LVM tests need; loaded before pytest starts.
GUEST_MODULES = ("dm-mod", "dm-snapshot", "dm-thin-pool", "loop")
#: LVM settings for the throwaway guest (see :class:`snaptree_lvm.lvmcmd.LvmCommands`).
GUEST_LVM_CONFIG = ('devices{global_filter=["a|^/dev/loop|","r|.*|"] scan_lvs=0} '
                    'backup{backup=0 archive=0}')


def find_kernel() -> str | None:
    """The newest installed Debian kernel image with modules, or ``$SNAPTREE_GUEST_KERNEL``."""
    wanted = os.environ.get("SNAPTREE_GUEST_KERNEL")
    if wanted:
        return wanted if os.path.exists(wanted) else None
    for image in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        release = os.path.basename(image)[len("vmlinuz-"):]
        if os.path.isdir(f"/lib/modules/{release}") and os.access(image, os.R_OK):
            return image
    return None


def find_vng() -> str | None:
    """``vng`` next to this Python (the venv) or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "vng")
    return beside if os.path.exists(beside) else shutil.which("vng")


@attrs.frozen
class GuestResult:
    """What came back from the guest."""

    returncode: int | None      # pytest's exit status inside; None if it never ran
    output: str                 # pytest's output inside
    console: str                # vng's own stdout+stderr (boot messages, panics)
    junit_path: str
    seconds: float


def _inner_script(out_dir: str, repo: str, pytest_args: list[str],
                  env: dict[str, str]) -> str:
    q = shlex.quote
    modules = " ".join(q(m) for m in GUEST_MODULES)
    args = " ".join(q(a) for a in pytest_args)
    exports = "".join(f"export {k}={q(v)}\n" for k, v in env.items() if k.isidentifier())
    return f"""#!/bin/sh
# written by tests/guest/vng.py; runs inside the guest as root
: > {q(os.path.join(out_dir, STARTED))}
for m in {modules}; do modprobe "$m" || echo "modprobe $m failed" >&2; done
export HOME=/tmp/snaptree-guest-home TMPDIR=/tmp PYTHONDONTWRITEBYTECODE=1
export SNAPTREE_IN_GUEST=1 LVM_SUPPRESS_FD_WARNINGS=1
# virtme-ng starts a udevd, but syncing with it costs seconds per LVM command under TCG.
# The guest tests exercise the no-udev path (libdevmapper and LVM make the nodes), so udevd
# must go: left running, its dm rules act on the same nodes late, and a remove event it
# handles after a rename deletes /dev/VG/LV that LVM has just made for the new device.
udevadm control --exit || echo "udevadm control --exit failed" >&2
rm -f /run/udev/control
for comm in /proc/[0-9]*/comm; do
    if [ "$(cat "$comm" 2>/dev/null)" = systemd-udevd ]; then
        echo "systemd-udevd still runs in the guest; refusing to test the no-udev path" >&2
        exit 96
    fi
done
# only the tests' loop devices hold PVs; skipping the rest and the metadata archive
# saves a good part of every LVM command under TCG
export SNAPTREE_LVM_CONFIG={q(GUEST_LVM_CONFIG)}
{exports}mkdir -p "$HOME"
cd {q(repo)} || exit 97
{q(sys.executable)} -m pytest {args} --junitxml={q(os.path.join(out_dir, 'junit.xml'))} \\
    > {q(os.path.join(out_dir, 'output.txt'))} 2>&1 < /dev/null
echo $? > {q(os.path.join(out_dir, 'rc'))}
"""


def run_pytest_in_guest(pytest_args: list[str], out_dir: str, *, repo: str,
                        env: dict[str, str] | None = None, memory: str = "1536M", cpus: int = 2,
                        timeout: float = 900) -> GuestResult:
    """Boot the guest and run ``python -m pytest PYTEST_ARGS`` in ``repo`` there
    (booting again once if the first boot hangs before the script starts).

    :param env: extra environment variables for pytest inside the guest.
    """
    kernel, vng = find_kernel(), find_vng()
    if kernel is None or vng is None:
        raise FileNotFoundError("needs virtme-ng (vng) and a kernel image in /boot")
    os.makedirs(out_dir, exist_ok=True)
    script = os.path.join(out_dir, "inner.sh")
    with open(script, "w", encoding="utf-8") as f:
        f.write(_inner_script(out_dir, repo, pytest_args, env or {}))
    env = dict(os.environ)
    # vng runs virtme-run from PATH and writes under $HOME; give it both
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    home = env.get("HOME", "")
    if not home or not os.access(home, os.W_OK):
        env["HOME"] = os.path.join(out_dir, "home")
        os.makedirs(env["HOME"], exist_ok=True)
    argv = [vng, "--run", kernel, "--disable-kvm", "--memory", memory, "--cpus", str(cpus),
            "--rwdir", out_dir, "--exec", f"sh {shlex.quote(script)}"]
    started = time.monotonic()
    console = ""
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        booted, text = _boot(argv, env, out_dir, timeout)
        console += text
        if booted:
            break
        console += (f"\n--- the guest did not reach its script within {BOOT_TIMEOUT:.0f}s "
                    f"(boot {attempt} of {BOOT_ATTEMPTS}) ---\n")
    seconds = time.monotonic() - started
    returncode = None
    try:
        with open(os.path.join(out_dir, "rc"), encoding="ascii") as f:
            returncode = int(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(out_dir, "output.txt"), encoding="utf-8", errors="replace") as f:
            output = f.read()
    except OSError:
        output = ""
    return GuestResult(returncode, output, console, os.path.join(out_dir, "junit.xml"), seconds)


def _boot(argv: list[str], env: dict[str, str], out_dir: str, timeout: float) -> tuple[bool, str]:
    """Run the guest once; ``(reached its script, console text)``.

    A TCG boot takes under a minute here but has been seen to hang without
    a word; one that has not started the script within ``BOOT_TIMEOUT`` is
    killed (vng, QEMU and all) so the caller can boot again.
    """
    marker = os.path.join(out_dir, STARTED)
    console_path = os.path.join(out_dir, "console.txt")
    if os.path.exists(marker):
        os.unlink(marker)
    with open(console_path, "w", encoding="utf-8") as console:
        proc = subprocess.Popen(argv, stdout=console, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        begun = time.monotonic()
        booted = False
        note = ""
        while proc.poll() is None:
            booted = booted or os.path.exists(marker)
            waited = time.monotonic() - begun
            if (not booted and waited > BOOT_TIMEOUT) or waited > timeout:
                if booted:
                    note = f"guest timed out after {timeout:.0f}s\n"
                _kill_group(proc)
                break
            time.sleep(1)
        booted = booted or os.path.exists(marker)
    with open(console_path, encoding="utf-8", errors="replace") as console:
        return booted, note + console.read()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
