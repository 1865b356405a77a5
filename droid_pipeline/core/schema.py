"""The per-episode output contract: files, array keys, their dtypes, shapes and units.

An episode finished under an older schema is not finished for the current one.
"""

from __future__ import annotations

SCHEMA_VERSION = 2
