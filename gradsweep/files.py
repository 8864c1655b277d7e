"""Files written whole or not at all: a temp file beside the target, then a rename.

A reader (a resumed run, a sweep's next job, a user's script) sees the old file or the new one,
never half of one, and a write that fails or is interrupted leaves no temp file behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: Path, mode: str = "w", *, fsync: bool = False) -> Iterator[IO[Any]]:
    """A handle on a temp file beside `path` that replaces `path` when the block ends.

    If the block raises, `path` is left as it was and the temp file is removed. `fsync`
    makes the contents durable before the rename, for files a crash must not tear (a
    checkpoint); without it a crash can leave a torn file, which suits files that are checked
    when read. The file is readable by all (0644), as one written by `open` usually is, so
    that others who share a data root or a sweep folder can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, values: dict[str, object]) -> None:
    """Write `values` as JSON, atomically; non-finite floats are written as null, so that any
    JSON reader can parse the file."""
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }
    with atomic_write(path) as handle:
        json.dump(clean, handle, indent=2, sort_keys=True)
        handle.write("\n")
