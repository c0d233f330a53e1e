"""The identity screen: every value that survives the policy is searched for the object's own identity.

Real IODs carry free text where Table E.1-1 does not look, and in VRs no free-text rule covers: Content Label
(CS), Graphic Layer Description, Segment Label, Channel Label of a waveform, Code Meaning and Text Value in a
content tree, URIs. So after the policy has decided an element's fate, every value it keeps or cleans (at every
nesting level, in the VRs ``identity.screened_vrs`` of ``rules/free_text.yaml``, private elements kept by Retain
Safe Private included) is searched with the object's deny-list (:mod:`deidpipe.header.identity`, one compiled
pattern per object, :class:`~deidpipe.header.text.DenyList`), and a hit replaces the WHOLE value: never a value
with part of a name masked and part left. The walk (:func:`deidpipe.header.walk.scrub_element`) turns the result
into a dummy of the VR, or a removal.

URIs (VR UR, and a value of another text VR that is one URL as a whole) keep no user information, query string or
fragment, and no path segment that holds an identifier; a host that holds one makes the whole value a hit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from deidpipe.header.text import DenyList

SCREENED_COUNT = "identity_screened"  # audit: elements whose value held an identity (replaced or removed)
URI_COUNT = "uri_cleaned"  # audit: URIs that lost a query, fragment, user information or path segment
#: VRs whose values may hold several values separated by backslashes (the others hold one, backslashes included).
SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
#: A value of another text VR that is one URL as a whole: scheme://anything, no spaces.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


@dataclass
class Screened:
    """The screen's verdict on one element's values.

    Attributes:
        values: each value as it may go out, None where it held an identity (the caller puts a dummy there).
        hits: how many values held an identity.
        changed: whether any value differs from what came in (a hit, or a cleaned URI).
    """

    values: list[str | None]
    hits: int = 0
    changed: bool = False


def clean_uri(value: str, deny: DenyList) -> str | None:
    """``value`` without user information, query string and fragment, and without the path segments that hold
    an identifier (percent-decoded before they are searched); None when the host holds one."""
    parts = urlsplit(value.strip())
    host = parts.netloc.rpartition("@")[2]  # user:password@ goes whatever it holds
    if deny.hits(unquote(host)):
        return None
    path = "/".join(seg for seg in parts.path.split("/") if not deny.hits(unquote(seg)))
    return urlunsplit((parts.scheme, host, path, "", ""))


def _is_uri(vr: str, value: str) -> bool:
    return vr == "UR" or ("://" in value and _URL.fullmatch(value.strip()) is not None)


def screen_values(values: list[str], vr: str, deny: DenyList, counts: dict[str, int]) -> Screened:
    """Screen the decoded values of one element of VR ``vr``; count cleaned URIs in ``counts``."""
    out = Screened([])
    for value in values:
        new: str | None = value
        if _is_uri(vr, value):
            new = clean_uri(value, deny)
            if new is not None and new != value.strip():
                counts[URI_COUNT] += 1
                out.changed = True
        if new is None or deny.hits(new):
            new = None
            out.hits += 1
            out.changed = True
        out.values.append(new)
    return out


def text_of_bytes(raw: bytes, vr: str) -> str | None:
    """A raw value as text where that is cheap and certain: ASCII (every character set's common part; but not
    ISO 2022 text, whose escape sequences switch to other sets in 7-bit bytes), and for UN, bytes that read as
    printable text in UTF-8, or else byte for byte in Latin-1 (the character set of most 8-bit text, and the
    misdeclared one of the rest: a kept attribute written as UN with a Latin-1 name in it went out unscreened);
    None otherwise (the caller decodes with the object's character set, or, for UN, treats the value as
    binary: control characters, as binary values hold, are not text)."""
    data = raw.rstrip(b"\x00 ")
    if data.isascii() and b"\x1b" not in data:
        text = data.decode("ascii")
    elif vr == "UN":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    else:
        return None
    if vr == "UN" and not text.replace("\r", "").replace("\n", "").replace("\t", "").isprintable():
        return None  # binary: nothing to read
    return text


def split_values(text: str, vr: str) -> list[str]:
    """The values of a decoded multi-valued text (backslash-separated), or the one value of an LT/ST/UT/UR."""
    return [text] if vr in SINGLE_VALUED else text.split("\\")


def latin1_hit(latin1: str, denylist: DenyList) -> bool:
    """Whether ``latin1``, a text value's bytes read one by one as Latin-1, holds the identity as a name that a
    second system wrote in Latin-1 under another declared character set: a common mislabelling that the declared
    set decodes out of every term's reach. UTF-8 puts U+FFFD where a byte fails ("M?ller"), a single-byte set that
    defines every byte decodes other letters ("Mќller" under Cyrillic ISO_IR 144), Shift JIS or GB18030 join a
    byte and the letter after it into one character ("J臠er").

    Such a name mixes ASCII letters with bytes beyond ASCII, so a hit counts where one of the reading's spans
    holds both. A span of ASCII alone reads the same in every set (the decoded text was screened or cleaned with
    it); one of bytes beyond ASCII alone is text of the declared set (a Greek or Cyrillic word read as Latin-1 may
    fold to a short name: "άρα" to "una")."""
    return any(_mixes_ascii_letters_and_high_bytes(latin1[start:end]) for start, end in denylist.spans(latin1))


def _mixes_ascii_letters_and_high_bytes(span: str) -> bool:
    return any(c >= "\x80" for c in span) and any(c.isascii() and c.isalpha() for c in span)
