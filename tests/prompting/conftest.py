"""Fixtures of the prompting tests (this folder is a package, so this conftest does not shadow tests/conftest.py)."""

from __future__ import annotations

import pytest

from .fake_llm import FakeChatServer


@pytest.fixture(scope="session")
def llm():
    """One fake OpenAI-compatible endpoint on 127.0.0.1 for the session."""
    server = FakeChatServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_enhancer_env(monkeypatch):
    """No enhancer settings leak in from the developer's shell."""
    for name in ("MAGIHUMAN_ENHANCE_URL", "MAGIHUMAN_ENHANCE_MODEL", "MAGIHUMAN_ENHANCE_API_KEY", "OPENAI_API_KEY",
                 "MAGIHUMAN_ENHANCE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
