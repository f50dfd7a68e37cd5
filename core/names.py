"""Validation of names and volume specs that come from users."""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Sequence

from .errors import InvalidInput

__all__ = ["MAX_NAME_LENGTH", "NAME_MAX", "check_name", "normal_name", "check_description", "split_spec",
           "check_abs_path", "beside", "check_room_beside", "entries_beside", "remove_if_empty"]

MAX_NAME_LENGTH = 64


#: characters a snapshot's description may hold
MAX_DESCRIPTION_LENGTH = 4096


def check_description(text: object) -> str:
    """Return ``text`` if it may be a snapshot's description, else raise."""
    if not isinstance(text, str) or "\x00" in text or len(text) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInput(f"description must be text without NUL, at most "
                           f"{MAX_DESCRIPTION_LENGTH} characters")
    return text


def normal_name(name: str) -> str:
    """The form a name is stored, looked up and compared in: Unicode NFC.

    "café" typed with a precomposed ``é`` or as ``e`` plus a combining
    accent looks the same and is one name.
    """
    return unicodedata.normalize("NFC", name)


#: letters and symbols that draw nothing, beyond the format characters (Cf)
#: refused anyway: Unicode's default-ignorable code points (Hangul fillers,
#: variation selectors, the combining grapheme joiner, Mongolian free
#: variation selectors, ...) and the blank Braille pattern
_BLANKS = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x2800, 0x2800), (0x3164, 0x3164), (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)


def _draws_nothing(ch: str) -> bool:
    code = ord(ch)
    return any(low <= code <= high for low, high in _BLANKS)


def check_name(name: object, what: str = "snapshot name") -> str:
    """Return ``name`` in its stored form (:func:`normal_name`) if it is a
    valid snapshot or group name, else raise.

    Rules: 1 to 64 characters; no ``/``, ``\\``, NUL or other control
    characters, no character that draws nothing (zero-width, bidi
    overrides, Hangul fillers, the blank Braille pattern); no leading ``-``
    or ``.``; no surrounding whitespace.
    """
    if not isinstance(name, str):
        raise InvalidInput(f"{what} must be a string")
    name = normal_name(name)
    if not name:
        raise InvalidInput(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} is {len(name)} characters long; at most {MAX_NAME_LENGTH} allowed")
    if name[0] in "-.":
        raise InvalidInput(f"{what} {name!r} must not start with {name[0]!r}")
    if name != name.strip():
        raise InvalidInput(f"{what} {name!r} must not start or end with whitespace")
    for ch in name:
        if ch == "/":
            raise InvalidInput(f"{what} {name!r} must not contain '/'")
        if ch == "\\":
            raise InvalidInput(f"{what} {name!r} must not contain '\\'")
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise InvalidInput(f"{what} {name!r} contains a control or invalid character")
        if category == "Cf":  # invisible: zero-width, bidi overrides
            raise InvalidInput(f"{what} {name!r} contains an invisible formatting character "
                               f"(U+{ord(ch):04X})")
        if _draws_nothing(ch):  # a look-alike of a shorter name, or of none
            raise InvalidInput(f"{what} {name!r} contains a character that draws nothing "
                               f"(U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')})")
    return name


def split_spec(spec: object) -> tuple[str, str]:
    """Split ``BACKEND:LOCATOR`` into its two parts, checking only the shape."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InvalidInput(f"volume spec {spec!r} must look like BACKEND:LOCATOR, e.g. raw:/var/lib/images/d.img")
    backend, locator = spec.split(":", 1)
    if not backend or not backend.replace("_", "").replace("-", "").isalnum() or not backend.isascii():
        raise InvalidInput(f"volume spec {spec!r} has an invalid backend name {backend!r}")
    if not locator:
        raise InvalidInput(f"volume spec {spec!r} has an empty locator")
    _check_encodable(locator, f"volume spec {spec!r}")
    if "\x00" in locator or any(unicodedata.category(c) == "Cc" for c in locator):
        raise InvalidInput(f"volume spec {spec!r} contains control characters")
    return backend, locator


def _check_encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid UTF-8 text") from None


def check_abs_path(locator: str, what: str = "path") -> str:
    """Return the normalised absolute path of ``locator``; refuse relative ones.

    Relative paths are refused rather than resolved against the working
    directory, because the catalog outlives the caller's cwd.
    """
    _check_encodable(locator, what)
    if not os.path.isabs(locator):
        raise InvalidInput(f"{what} {locator!r} must be absolute")
    if len(locator.encode("utf-8", "surrogateescape")) > 4000:
        raise InvalidInput(f"{what} is too long")
    return os.path.realpath(locator)


def beside(path: str, suffix: str) -> str:
    """A hidden sibling of ``path``: ``/dir/name`` -> ``/dir/.name<suffix>``.

    The backends keep their snapshots and temporary objects in such places
    (``.disk.img.snaptree/``), on the volume's own filesystem so that renames
    stay atomic and nothing is written outside the volume's directory.
    """
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}{suffix}")


#: the longest name of a directory entry, in bytes (ext4, xfs, btrfs, tmpfs)
NAME_MAX = 255


def check_room_beside(path: str, made: Sequence[str], what: str) -> None:
    """Refuse volume ``path`` when a name snaptree makes beside it (the
    paths ``made``, e.g. its :func:`beside` folder) would pass :data:`NAME_MAX`.

    Backends call this when a volume is claimed into a group, so the name
    is refused at ``group create`` rather than at the first snapshot.
    """
    over = max(len(os.fsencode(os.path.basename(p))) for p in made) - NAME_MAX
    if over > 0:
        size = len(os.fsencode(os.path.basename(path)))
        raise InvalidInput(
            f"{what}: the name of {path} has {size} bytes; snaptree keeps its snapshots in "
            f"'.NAME.snaptree' beside it and a file name has at most {NAME_MAX} bytes, so a "
            f"volume's name may have at most {size - over} bytes")


def entries_beside(folder: str, pattern: re.Pattern[str]) -> list[tuple[str, re.Match[str]]]:
    """``(path, match)`` for each name in ``folder`` that ``pattern`` matches, sorted.

    A folder :func:`beside` a volume exists only while it holds something,
    so a missing one has no entries.  Other ``OSError`` go to the caller,
    which maps them to its backend's errors.
    """
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = pattern.match(name)
        if match:
            found.append((os.path.join(folder, name), match))
    return found


def remove_if_empty(folder: str) -> None:
    """Remove ``folder`` when nothing is left in it (else, or if gone, do nothing)."""
    try:
        os.rmdir(folder)
    except OSError:
        pass
