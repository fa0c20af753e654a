"""Video lists: `path label [label ...]` per line (Kinetics / SSv2 style) or a folder of videos."""
import os
from typing import NamedTuple

# Containers decord and PyAV both open; anything else in a folder is ignored.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


class VideoRecord(NamedTuple):
    """One video: its path and its integer labels ((-1,) when unlabelled)."""
    path: str
    labels: tuple


def read_video_list(path, root=None):
    """Records of a list file or a folder.

    A list file has one video per line, `path label [label ...]`, whitespace separated, the path
    relative to `root` (default: the list file's folder) unless absolute, integer labels, the same
    number of labels on every line; blank lines and lines starting with `#` are ignored. A folder
    gives every video file under it (recursively, sorted), label -1.
    Raises FileNotFoundError for a missing path and ValueError for an empty list or a bad line.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        root = path if root is None else os.fspath(root)
        found = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                         if f.lower().endswith(VIDEO_EXTENSIONS))
        if not found:
            raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found under folder {path!r}")
        return [VideoRecord(p, (-1,)) for p in found]
    if not os.path.exists(path):
        raise FileNotFoundError(f"video list or folder {path!r} does not exist")
    root = os.path.dirname(os.path.abspath(path)) if root is None else os.fspath(root)
    records, num_labels = [], None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{path}:{lineno}"
            if len(fields) < 2:
                raise ValueError(f"{where}: expected `path label [label ...]`, got {line.strip()!r} (no label)")
            try:
                labels = tuple(int(v) for v in fields[1:])
            except ValueError:
                raise ValueError(f"{where}: labels must be integers (`path label [label ...]`), "
                                 f"got {' '.join(fields[1:])!r}; paths with spaces are not supported") from None
            if num_labels is None:
                num_labels = len(labels)
            elif len(labels) != num_labels:
                raise ValueError(f"{where}: {len(labels)} labels, but earlier lines have {num_labels}")
            records.append(VideoRecord(os.path.join(root, fields[0]), labels))
    if not records:
        raise ValueError(f"video list {path!r} has no entries (expected lines `path label [label ...]`)")
    return records
