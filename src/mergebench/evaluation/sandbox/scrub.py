"""Clean a detail before it is stored: bounded length, printable, no value of the harness's environment.

The sandbox gives the candidate an empty environment and no view of the host, so its messages
should not contain secrets; this is the second line. Details end up in the eval artifact's
``samples.jsonl``, so anything the harness's environment holds (tokens, paths with user names)
is replaced before it can be written there.
"""

from __future__ import annotations

import os

MAX_DETAIL = 500
_MIN_SECRET = 6  # shorter values ("1", "C", "true") would redact ordinary words


def scrub(text: str, limit: int = MAX_DETAIL) -> str:
    text = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in str(text)[: limit * 4])
    for value in sorted({v for v in os.environ.values() if len(v) >= _MIN_SECRET}, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "[redacted]")
    return text[:limit]
