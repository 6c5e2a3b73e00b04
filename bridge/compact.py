"""Compact storage of event bodies and action states: raw DEFLATE with a preset dictionary.

A webhook body is about 550 bytes of JSON, too short for zlib alone to do much (it learns the
field names only as it goes); primed with the platform's sample events and an action state it
stores a body in about a third of its size (docs/performance.md, "Storage"). Stored values carry a
version tag: `compact-v1.dict` must never change, a new dictionary gets a new tag, and values
without a tag (JSON written before, or by the digest) are read as they are.
"""

from __future__ import annotations

import zlib
from pathlib import Path

TAG = b"\x00z1"  # JSON never starts with NUL
DICTIONARY = (Path(__file__).parent / "compact-v1.dict").read_bytes()
_LEVEL = 6  # level 9 saves a few bytes more for twice the CPU


def pack(raw: bytes) -> bytes:
    """`raw` (JSON text) in its stored form."""
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=DICTIONARY)
    return TAG + packer.compress(raw) + packer.flush()


def unpack(stored: bytes) -> bytes:
    """The JSON text of a stored value, packed or not."""
    if not stored.startswith(TAG):
        return stored
    unpacker = zlib.decompressobj(-zlib.MAX_WBITS, zdict=DICTIONARY)
    return unpacker.decompress(stored[len(TAG) :]) + unpacker.flush()


def is_packed(stored: bytes) -> bool:
    return stored.startswith(TAG)
