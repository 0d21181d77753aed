"""Files shipped beside the package: experiment configs, sweeps and cluster launch scripts.

They live at the repository's top level (experiments/, launch/) and are installed as data files under
<prefix>/share/omnimouse-jax/ (setup.py), keeping the same relative layout, so a sweep finds its config next door
either way. A source checkout (editable install) uses its own copies, so edits take effect without reinstalling.
"""
from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
INSTALLED = Path(sys.prefix) / "share" / "omnimouse-jax"


def shipped(relative: str) -> Path:
    """The checkout's copy of a shipped file if there is one, else the installed copy (which may be missing: callers
    that open it report the path)."""
    for root in (CHECKOUT, INSTALLED):
        if (root / relative).exists():
            return root / relative
    return INSTALLED / relative
