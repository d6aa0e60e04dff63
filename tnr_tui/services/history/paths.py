"""Where the history lives, and whether that place can hold a SQLite file in WAL mode."""

from __future__ import annotations

import os
from pathlib import Path

from tnr_tui.services.history.errors import HistoryError

DB_NAME = "history.sqlite"
OUTPUTS = "outputs"

# Filesystem types on which SQLite's WAL (shared memory, POSIX locks) is unsafe or unreliable.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "glusterfs",
        "cephfs",
        "ceph",
        "afs",
        "9p",
        "virtiofs",
        "panfs",
        "wekafs",
        "fuse",
    }
)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The argument, else $TNR_LAB_HOME, else platformdirs' user data dir for tnr-lab.

    An empty argument is an error (HistoryError), not "use the default": `--data-dir "$UNSET_VAR"` must not
    quietly write into the user's real history. An empty or blank $TNR_LAB_HOME counts as unset.
    """
    if data_dir is not None:
        if not os.fspath(data_dir).strip():
            raise HistoryError("--data-dir is empty; give a directory (or leave the option out for the default)")
        return Path(data_dir).expanduser()
    env = os.environ.get("TNR_LAB_HOME", "")
    if env.strip():
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("tnr-lab", appauthor=False))


def _unescape_mount(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_type(path: Path, mounts_file: str = "/proc/mounts") -> str | None:
    """The type of the filesystem holding `path` (the longest matching mount point), or None if unknown."""
    try:
        text = Path(mounts_file).read_text()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point, fstype = _unescape_mount(parts[1]), parts[2]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fstype
    return best_type


def is_network_fs(fstype: str | None) -> bool:
    if not fstype:
        return False
    return fstype in NETWORK_FS_TYPES or fstype.startswith("fuse.") or fstype.split(".")[0] in NETWORK_FS_TYPES


READ_ONLY_FS = "read-only file system"
PERMISSION_DENIED = "permission denied"
NO_SPACE = "no space left on device"


def place_problem(directory: Path, files: tuple[Path, ...] = ()) -> str | None:
    """Why SQLite cannot write a history in `directory` (and its existing `files`), from metadata only:
    `READ_ONLY_FS`, `PERMISSION_DENIED`, `NO_SPACE`, or None when nothing is visibly wrong.

    Never opens a file (docs/history.md: only SQLite touches the database and its -wal/-shm).
    """
    try:
        fs = os.statvfs(directory)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    if fs.f_flag & os.ST_RDONLY:
        return READ_ONLY_FS
    for path in (directory, *files):
        if os.path.lexists(path) and not os.access(path, os.W_OK):
            return PERMISSION_DENIED
    # Root may use the reserved blocks (f_bfree); everyone else gets f_bavail.
    free = fs.f_bfree if getattr(os, "geteuid", lambda: -1)() == 0 else fs.f_bavail
    if free == 0:
        return NO_SPACE
    return None
