"""Text for tests that every Python installation carries, so a bare clone needs nothing beside it.

The large third-party evaluation texts (RILLET_SHARED_DATA) are for `bench/` only: tests must not read them.
"""

from __future__ import annotations

from functools import cache


@cache
def python_reference() -> str:
    """English prose with some code: the Python Language Reference topics that `pydoc` ships in the
    standard library (`pydoc_data.topics`, PSF licence), about 460,000 characters, in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))
