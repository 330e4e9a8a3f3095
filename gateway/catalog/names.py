"""Exposed names for tools and prompts: ``{namespace}{separator}{name}``.

Claude and OpenAI clients reject names outside ``^[a-zA-Z0-9_-]{1,64}$``. When
the joined name fits and is free, it is used as is. Otherwise it is shortened
deterministically: characters outside the set become ``_``, the name is cut so
that ``-`` plus a hex digest of the full joined name fits in 64 characters, and
on a collision the digest is lengthened. The router stores exposed -> original,
so reversal is a lookup; the same inputs in the same order give the same names.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["NAME_RE", "expose_name"]

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_MAX = 64


def expose_name(namespace: str, name: str, separator: str, taken: set[str]) -> str:
    """The exposed name for ``name`` of ``namespace``; adds it to ``taken``."""
    joined = f"{namespace}{separator}{name}"
    if NAME_RE.match(joined) and joined not in taken:
        taken.add(joined)
        return joined
    digest = hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()
    clean = _BAD.sub("_", joined)
    for size in range(8, len(digest) + 1, 4):
        candidate = f"{clean[: _MAX - size - 1]}-{digest[:size]}"
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    counter = 0
    while True:  # astronomically unlikely: every digest length collided
        counter += 1
        candidate = f"{clean[: _MAX - 20]}-{digest[:8]}-{counter}"
        if candidate not in taken:
            taken.add(candidate)
            return candidate
