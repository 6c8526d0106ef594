"""The one normal form texts are compared in (splits, curation, decontamination): case, whitespace,
punctuation and Unicode (NFKC) insensitive."""
from __future__ import annotations

import hashlib
import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def words(text: str) -> list[str]:
    return normalise(text).split()


def key(text: str) -> bytes:
    """16 bytes standing for the normal form (a million rows' keys stay small)."""
    return hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()
