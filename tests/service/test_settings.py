"""Settings fail fast, and never repeat a secret in the error."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from spul.service.settings import Settings


def test_a_too_short_admin_token_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("SPUL_ADMIN_TOKEN", "hunter2-secret")  # 14 characters: too short
    with pytest.raises(ValidationError) as err:
        Settings()
    assert "too short" in str(err.value) and "hunter2-secret" not in str(err.value)
