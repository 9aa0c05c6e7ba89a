"""Settings fail fast on values that would only break at request time."""

from __future__ import annotations

import pydantic
import pytest

from lossreg_service.settings import Settings
from tests.support.readme import documented_defaults, parse_default


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


def _default(field: str) -> object:
    return Settings.model_fields[field].get_default(call_default_factory=True)


def test_readme_documents_every_setting_with_its_real_default():
    """Each ``LOSSREG_*`` row of the README's tables states the default `Settings` has, and
    every setting has a row."""
    documented = documented_defaults()
    fields = {f"LOSSREG_{name.upper()}": name for name in Settings.model_fields}
    assert set(documented) == set(fields), "README and Settings name different settings"
    for variable, values in documented.items():
        default = _default(fields[variable])
        for value in values:
            # "(none)" documents an unset value: None, or an empty list for list settings
            assert value == default or (value is None and default in ([], None)), (
                f"{variable}: the README says {value!r}, Settings has {default!r}"
            )


def test_readme_default_parsing_reads_units_and_words():
    parsed = [parse_default(t) for t in ("256 MiB", "64 KiB", "`60 s` (x)", "0 = auto", "off")]
    assert parsed == [256 * 1024**2, 64 * 1024, 60, 0, False]
    assert parse_default("127.0.0.1") == "127.0.0.1" and parse_default("(none)") is None
