"""Text that PostgreSQL can store, whatever a device or a caller sent: NUL and lone surrogates escaped."""

from __future__ import annotations

import re
from typing import Final

# NUL cannot be stored in a text column; a lone surrogate cannot be encoded as UTF-8 at all
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def storable(text: str, max_chars: int | None = None) -> str:
    """`text` with NUL and lone surrogates written as \\x00 / \\udXXX escapes, cut to `max_chars` (marked with …)."""
    escaped = _UNSTORABLE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if m.group() == "\x00" else f"\\u{ord(m.group()):04x}", text
    )
    if max_chars is not None and len(escaped) > max_chars:
        assert max_chars >= 1
        return escaped[: max_chars - 1] + "…"
    return escaped
