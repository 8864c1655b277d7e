"""Files written whole or not at all: a temp file beside the target, then a rename."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def write_json_atomic(path: Path, values: dict[str, object]) -> None:
    """Write `values` as JSON via a temp file and a rename: readers never see half a file.

    Non-finite floats are written as null so any JSON reader can parse the file.
    """
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(clean, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
