"""Untrusted archives and model files (training zips, PyTorch ``.pt`` files, ``.safetensors``): checked
before anything is unpacked.

A zip's end record says how many entries it has, and its central directory says how large each
entry claims to be once unpacked.  Both are read before any member is decompressed (and before
``zipfile`` even parses a directory of 100,000 entries): too many entries, a member or a sum of
members over the caps, or a sum far larger than the file itself (a bomb of deflated zeros) is
refused.  The declared sizes are binding: ``zipfile`` stops reading a member at its declared size
and the CRC check then fails, and PyTorch's reader allocates exactly the declared size.  A ``.pt``
passes that check before it is unpickled, and then only with ``weights_only=True`` (:func:`load_torch`).

A ``.safetensors`` file is a length, a JSON header and raw tensor bytes; :func:`safetensors_header`
checks that every tensor's declared span lies inside the file and uses a float format before any
tensor is read.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

_END_RECORD = b"PK\x05\x06"
_END_RECORD_SIZE = 22
_MAX_COMMENT = 0xFFFF


class ArchiveError(ValueError):
    """An archive was refused; the message is meant for the user."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_ratio: float  # declared unpacked bytes per byte of the archive file


DAMAGED_ZIP = "That zip file is damaged or not a zip"


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def declared_entries(data: bytes) -> int:
    """The entry count in a zip's end record (0xFFFF for ZIP64 archives), read without parsing the
    central directory.  Raises :class:`ArchiveError` when there is no end record."""
    start = max(0, len(data) - _END_RECORD_SIZE - _MAX_COMMENT)
    at = data.rfind(_END_RECORD, start)
    if at < 0 or at + _END_RECORD_SIZE > len(data):
        raise ArchiveError(DAMAGED_ZIP)
    (total,) = struct.unpack_from("<H", data, at + 10)
    return total


def open_zip(data: bytes, limits: ArchiveLimits) -> zipfile.ZipFile:
    """Open untrusted zip bytes after checking the entry count, each declared size and their sum."""
    if declared_entries(data) > limits.max_members:
        raise ArchiveError(f"The archive holds more than {limits.max_members} entries; that is more than the bot reads")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error, NotImplementedError):
        raise ArchiveError(DAMAGED_ZIP) from None  # NotImplementedError: a "version needed" zipfile cannot read
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise ArchiveError(f"The archive holds {len(infos)} entries; the limit is {limits.max_members}")
    biggest = max(infos, key=lambda i: i.file_size, default=None)
    if biggest is not None and biggest.file_size > limits.max_member_bytes:
        raise ArchiveError(
            f"`{biggest.filename[:80]}` in the archive unpacks to {_mb(biggest.file_size)}; the limit is {_mb(limits.max_member_bytes)}"
        )
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes or total > limits.max_ratio * max(len(data), 1):
        raise ArchiveError(
            f"The archive unpacks to {_mb(total)} from {_mb(len(data))}; the limit is "
            f"{_mb(min(limits.max_total_bytes, limits.max_ratio * len(data)))}"
        )
    return archive


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes (at most its checked declared size); damage becomes :class:`ArchiveError`."""
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError):
        raise ArchiveError(f"`{info.filename[:80]}` in the zip is damaged, encrypted or uses an unsupported compression") from None


def check_torch_archive(data: bytes, limits: ArchiveLimits) -> None:
    """Refuse a PyTorch file that is not a checked zip (the legacy pre-1.6 format declares storage
    sizes inside its pickle, where they cannot be checked before loading)."""
    if not data.startswith(b"PK"):
        raise ArchiveError("This is not a PyTorch zip file (files saved by PyTorch before 1.6 are not accepted; re-save it)")
    open_zip(data, limits).close()


def load_torch(data: bytes, limits: ArchiveLimits) -> Any:
    """A PyTorch ``.pt`` file's contents: the zip checked against ``limits`` first, then unpickled with
    ``weights_only=True`` (tensors, numbers, strings and containers only); :class:`ArchiveError` says
    why a file is refused (pickled code included)."""
    import torch  # only here: the rest of the module serves code that never loads torch

    check_torch_archive(data, limits)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ArchiveError(
            "this .pt file contains pickled code or objects other than tensors, which the bot refuses to load. "
            f"Convert it to .safetensors, or re-save it from a trusted tool. ({str(exc).splitlines()[0][:160]})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged stream makes torch.load raise anything (KeyError, BadZipFile …)
        raise ArchiveError(f"this is not a readable PyTorch .pt file ({type(exc).__name__}: {str(exc)[:160]})") from None


SAFETENSORS_DTYPES = frozenset({"F16", "BF16", "F32"})
_MAX_HEADER = 16 * 1024 * 1024


def safetensors_header(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a ``.safetensors`` file from its header alone: each tensor's entry
    (``dtype``, ``shape``, ``data_offsets``) and the ``__metadata__`` strings.  A short file, a header
    that is not a JSON table, a span outside the file or a non-float tensor is an :class:`ArchiveError`."""
    if len(data) < 8:
        raise ArchiveError("That is not a .safetensors file (it is too short)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        raise ArchiveError("That is not a .safetensors file (its header is damaged)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError):
        raise ArchiveError("That is not a .safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ArchiveError("That is not a .safetensors file (its header is not a table)")
    meta = header.pop("__metadata__", None) or {}
    body = len(data) - 8 - size
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
            or entry.get("dtype") not in SAFETENSORS_DTYPES
            or not isinstance(entry.get("shape"), list)
        ):
            raise ArchiveError(f"That file is damaged or uses an unsupported number format (tensor `{str(name)[:80]}`)")
    return header, {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
