"""magihuman: daVinci-MagiHuman text (+image, +audio) to talking-human video with speech.

The heavy submodules are imported lazily so that ``import magihuman`` stays cheap and a CLI
``--help`` does not load torch kernels it does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MagiHumanTransformer": "magihuman.model.transformer",
    "MagiHumanPipeline": "magihuman.pipeline.magihuman_pipeline",
    "GenerationOutput": "magihuman.pipeline.magihuman_pipeline",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'magihuman' has no attribute {name!r}")
