"""Output of the evaluation scripts: a JSON document to a file, or to stdout."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(out, path=None) -> None:
    """``out`` as indented JSON into ``path`` (written whole), or printed when ``path`` is None."""
    text = json.dumps(out, indent=1)
    if path:
        Path(path).write_text(text + "\n")
    else:
        print(text)
