"""Regenerate the key tables of docs/outputs.md from the output schema (droid_pipeline/core/schema.py).

Run after changing the schema: ``python scripts/update_output_docs.py``. tests/core/test_schema.py
fails while the doc and the schema disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from droid_pipeline.core.schema import render_doc

DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"


def main() -> int:
    text = DOC.read_text()
    rendered = render_doc(text)
    if rendered != text:
        DOC.write_text(rendered)
    print(f"{DOC}: {'updated' if rendered != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
