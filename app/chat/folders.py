"""Which folders the web UI may index: only those inside the configured allowed roots.

The path is resolved first (symlinks followed, `..` collapsed), then checked, so neither `..` nor a
link pointing out of a root gets past.
"""

from __future__ import annotations

from pathlib import Path

from backbone.errors import InvalidRequest


class FolderNotAllowedError(InvalidRequest):
    """The folder is missing, not a folder, or outside every allowed root."""


def allowed_folder(raw: str, roots: list[Path]) -> Path:
    """The resolved folder, or `FolderNotAllowedError` that says what to do."""
    text = (raw or "").strip()
    if not text:
        raise FolderNotAllowedError("Type the path of a folder to index.")
    if "\x00" in text:
        raise FolderNotAllowedError("The path contains a NUL character; type a plain folder path.")
    resolved_roots = [root.expanduser().resolve() for root in roots]
    allowed = ", ".join(str(r) for r in resolved_roots)
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise FolderNotAllowedError(f"Give an absolute path (starting with /) inside an allowed root: {allowed}.")
    try:
        path = path.resolve()
    except (RuntimeError, OSError):  # a symlink loop, an unreadable component
        raise FolderNotAllowedError(f"The path {text} cannot be resolved; give a plain folder path.") from None
    # Containment first: whether something exists outside the roots is none of the caller's business.
    if not any(path == root or path.is_relative_to(root) for root in resolved_roots):
        raise FolderNotAllowedError(
            f"{text} is outside the folders this server may read ({allowed}). Pick a folder inside one of them, "
            "or add its root to RILLET_ALLOWED_ROOTS.")
    if not path.exists():
        raise FolderNotAllowedError(f"The folder {text} does not exist.")
    if not path.is_dir():
        raise FolderNotAllowedError(f"{text} is a file, not a folder; give the folder that holds it.")
    return path
