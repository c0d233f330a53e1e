"""deidpipe.pixels.icc: the text of a colour profile blanked, its colour data unchanged, LittleCMS still reads it."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from deidpipe.pixels.icc import ICCError, blank_icc_text

NAME = b"Plantedsurname"


def _tags(profile: bytes) -> dict[bytes, bytes]:
    count = struct.unpack_from(">I", profile, 128)[0]
    out = {}
    for k in range(count):
        sig, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * k)
        out[sig] = profile[offset:offset + size]
    return out


def _v2_profile() -> bytes:
    """LittleCMS's sRGB (version 4) with its description and copyright replaced by version 2 text types that
    hold a name: ``desc`` (ASCII, Unicode and ScriptCode parts) and ``text``; a creation date set."""
    base = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    uni = "Dr " + NAME.decode()
    desc = (b"desc" + bytes(4) + struct.pack(">I", len(NAME) + 4) + b"Dr " + NAME + b"\x00"
            + struct.pack(">II", 0, len(uni)) + uni.encode("utf-16-be") + struct.pack(">HB", 0, 3) + b"Dr "
            + bytes(64))
    text = b"text" + bytes(4) + b"(c) " + NAME + b"\x00"
    tail = []
    count = struct.unpack_from(">I", base, 128)[0]
    end = len(base)
    for k in range(count):
        sig = bytes(base[132 + 12 * k:136 + 12 * k])
        new = {b"desc": desc, b"cprt": text}.get(sig)
        if new is not None:
            pad = new + bytes(-len(new) % 4)
            struct.pack_into(">II", base, 136 + 12 * k, end, len(new))
            tail.append(pad)
            end += len(pad)
    base[24:36] = struct.pack(">6H", 2026, 12, 7, 10, 30, 0)
    out = bytes(base) + b"".join(tail)
    return struct.pack(">I", len(out)) + out[4:]  # the profile size


@pytest.mark.parametrize("make", [lambda: ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
                                  _v2_profile], ids=["v4 mluc", "v2 desc text"])
def test_text_is_blanked_and_colours_stay(make):
    profile = make()
    blanked = blank_icc_text(profile)
    assert len(blanked) == len(profile)
    assert NAME not in blanked and "Plantedsurname".encode("utf-16-be") not in blanked
    assert blanked[24:36] == struct.pack(">6H", 2000, 1, 1, 0, 0, 0) and blanked[84:100] == bytes(16)
    assert ImageCms.ImageCmsProfile(io.BytesIO(blanked)).profile.creation_date.year == 2000  # Pillow reads it
    before, after = _tags(profile), _tags(blanked)
    assert before.keys() == after.keys()
    for sig in before:
        if before[sig][:4] not in (b"desc", b"text", b"mluc"):
            assert after[sig] == before[sig], sig  # colour tags byte for byte
    # LittleCMS reads the blanked profile, and transforms through it as through the original
    image = Image.fromarray((np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3))
    srgb = ImageCms.createProfile("sRGB")
    outs = [np.asarray(ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(p)), srgb))
            for p in (profile, blanked)]
    assert np.array_equal(outs[0], outs[1])
    assert blank_icc_text(blanked) is blanked  # nothing left to blank: the very same object


def test_profiles_littlecms_reads_are_cleaned_not_refused():
    """Review: a last tag that runs past the profile, an empty tag entry, a description whose counts do not add up,
    and a tag of another type holding text (a dictionary, a description sequence): each is cleaned as far as it is
    there (text types blanked, the others zeroed), the colour tags kept."""
    profile = bytearray(_v2_profile())
    count = struct.unpack_from(">I", profile, 128)[0]
    entries = {bytes(profile[132 + 12 * k:136 + 12 * k]): 132 + 12 * k for k in range(count)}
    desc_at = struct.unpack_from(">I", profile, entries[b"desc"] + 4)[0]
    struct.pack_into(">I", profile, desc_at + 8, 10_000)  # an ASCII count far past the tag
    cprt_at = struct.unpack_from(">I", profile, entries[b"cprt"] + 4)[0]
    profile[cprt_at:cprt_at + 4] = b"dict"  # text under another type
    struct.pack_into(">I", profile, entries[b"cprt"] + 8, len(profile) - cprt_at + 4)  # runs past the end
    blanked = blank_icc_text(bytes(profile))
    assert NAME not in blanked and len(blanked) == len(profile)
    assert _tags(blanked)[b"rXYZ"] == _tags(bytes(profile))[b"rXYZ"]


def test_a_tag_table_that_runs_past_the_profile_is_refused():
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    struct.pack_into(">I", profile, 128, 1000)
    with pytest.raises(ICCError):
        blank_icc_text(bytes(profile))
