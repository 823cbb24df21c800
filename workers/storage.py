"""The storage root that clients and workers share (VIDSTYLE_STORAGE).

Jobs name their files relative to it, because each machine mounts the shared
filesystem wherever it likes. Workers touch nothing outside it: a job naming an
absolute path, a `..` or a symlink that leads out is refused.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from vidstyle.settings import setting
from vidstyle.errors import VidstyleError


def storage_root() -> Path:
    value = setting("VIDSTYLE_STORAGE")
    if not value:
        raise VidstyleError("no storage root configured: set VIDSTYLE_STORAGE to the folder that clients and workers share")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise VidstyleError(f"storage root {root} (VIDSTYLE_STORAGE) is not a folder")
    return root


def relative_to_storage(path: Path, root: Path) -> str:
    """A local path (as a user typed it) as the storage-relative name a job carries."""
    resolved = path.expanduser().resolve()  # follows symlinks: one that leads out is out
    if not resolved.is_relative_to(root):
        raise VidstyleError(f"{path} is outside the storage root {root} (VIDSTYLE_STORAGE); workers can only reach files under it")
    return resolved.relative_to(root).as_posix()


def resolve_in_storage(name: str, root: Path) -> Path:
    """The local path of a storage-relative name from a job; never trusts the name."""
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise VidstyleError(f"path '{name}' is not inside the storage root (absolute, empty or with '..')")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        raise VidstyleError(f"path '{name}' leads outside the storage root through a symlink")
    return resolved
