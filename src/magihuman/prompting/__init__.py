"""Prompt enhancement: a short idea rewritten into the three-part prompt the model was tuned on (docs/prompting.md).

``structure`` (the format: checks and mechanical repairs), ``system_prompt`` (our instructions to the
rewriting model), ``backends`` (an OpenAI-compatible endpoint or a local transformers model) and ``enhancer``
(``enhance_prompt``: send, check, repair or retry once, else keep the user's prompt with a warning).
Torch-free at import; the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "enhance_prompt": "magihuman.prompting.enhancer",
    "EnhanceResult": "magihuman.prompting.enhancer",
    "OpenAIChatBackend": "magihuman.prompting.backends",
    "LocalModelBackend": "magihuman.prompting.backends",
    "PromptEnhancerBackend": "magihuman.prompting.backends",
    "BackendError": "magihuman.prompting.backends",
    "EnhancerConfigError": "magihuman.prompting.backends",
    "backend_from_settings": "magihuman.prompting.backends",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'magihuman.prompting' has no attribute {name!r}")
