"""Numbers as people read them."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """1536 -> "1.5 KB" (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
