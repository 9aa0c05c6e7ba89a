"""Settings fail fast on values that would only break at request time."""

from __future__ import annotations

import pydantic
import pytest

from lossreg_service.settings import Settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LOSSREG_COMPUTE_DTYPE", "int64"), ("LOSSREG_LOG_LEVEL", "verbose"), ("LOSSREG_PORT", "-1")],
)
def test_bad_settings_are_refused_at_start_up(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(pydantic.ValidationError) as excinfo:
        Settings()
    assert variable.removeprefix("LOSSREG_").lower() in str(excinfo.value)


def test_lists_take_commas_or_json(monkeypatch):
    monkeypatch.setenv("LOSSREG_DENY", "focal*, dice")
    monkeypatch.setenv("LOSSREG_API_KEYS", '["k1", "k2"]')
    settings = Settings()
    assert settings.deny == ["focal*", "dice"] and settings.api_keys == ["k1", "k2"]
    assert Settings(compute_dtype="float32").compute_dtype == "float32"
