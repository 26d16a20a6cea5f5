"""Write bundle configs in the collection's JSON layout: 4-space indents, a list or object on one line when it fits.

python tools/format_configs.py            # rewrite every bundles/*/configs/*.json in place
python tools/format_configs.py --check    # exit 1 listing the files that are not formatted
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import fire

WIDTH = 120


def dumps(value: Any, indent: int = 0) -> str:
    """``value`` as JSON: containers inline when ``indent`` + their one-line form fits in ``WIDTH`` and they hold
    no container with more than one entry spread out; otherwise one entry per line."""
    inline = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (dict, list)) or not value or indent + len(inline) <= WIDTH - 4 and _shallow(value):
        return inline
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, dict):
        rows = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dumps(v, indent + 4)}" for k, v in value.items()]
        return "{\n" + ",\n".join(rows) + f"\n{pad}}}"
    rows = [f"{inner}{dumps(v, indent + 4)}" for v in value]
    return "[\n" + ",\n".join(rows) + f"\n{pad}]"


def _shallow(value: Any) -> bool:
    """Objects inside a one-line container are allowed; a list of objects is not (each gets its own line)."""
    if isinstance(value, list):
        return not any(isinstance(v, dict) for v in value) or len(value) == 1
    return True


def format_text(text: str) -> str:
    return dumps(json.loads(text)) + "\n"


def main(check: bool = False, root: str = ".") -> None:
    bad = []
    for path in sorted(Path(root).glob("bundles/*/configs/*.json")):
        text = path.read_text()
        formatted = format_text(text)
        if formatted != text:
            bad.append(str(path))
            if not check:
                path.write_text(formatted)
    if check and bad:
        print("not formatted (run python tools/format_configs.py):\n" + "\n".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
