"""Discovery through the ``lossreg.losses`` entry-point group, conflicts, failures and queries."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from lossreg.errors import AmbiguousLoss, LossNotFound, LossUnavailable, PluginLoadError
from lossreg_service.engine import evaluate
from lossreg_service.registry import LossRegistry
from tests.support.plugins import make_distribution

TORCH_LOSSES = {
    "l1_loss", "mse_loss", "cross_entropy", "nll_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "kl_div", "huber_loss", "smooth_l1_loss",
    "soft_margin_loss", "multilabel_soft_margin_loss", "multilabel_margin_loss",
    "multi_margin_loss", "hinge_embedding_loss", "cosine_embedding_loss", "margin_ranking_loss",
    "triplet_margin_loss", "poisson_nll_loss", "gaussian_nll_loss", "ctc_loss",
}  # fmt: skip

_counter = itertools.count()


def _module_name(stem: str) -> str:
    """A fresh module name per test: sys.modules caches imports across tests."""
    return f"{stem}_{next(_counter)}"


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtin_torch_losses_are_discovered_through_entry_points():
    registry = LossRegistry.from_entry_points()
    own = {s.name for s in registry.list() if s.distribution == "lossreg"}
    assert TORCH_LOSSES <= own
    spec = registry.spec("poisson_nll_loss")
    assert [t.name for t in spec.inputs] == ["input", "target"]
    assert "log_input" in spec.params_schema["properties"]
    assert spec.entry_point == "lossreg_service.losses.torch_nn:poisson_nll_loss"
    assert spec.version  # the installed distribution's version


def test_third_party_plugin_is_discovered_with_its_origin(plugin_path):
    mod = _module_name("thirdparty")
    make_distribution(
        plugin_path,
        "acme-losses",
        {"acme_l2": f"{mod}:acme_l2"},
        {mod: "def acme_l2(input, target, scale: float = 1.0):\n"
              "    return scale * ((input - target) ** 2).sum()\n"},
        version="2.3.4",
    )  # fmt: skip
    registry = LossRegistry.from_entry_points()
    spec = registry.spec("acme_l2")
    assert (spec.distribution, spec.version) == ("acme-losses", "2.3.4")
    assert registry.spec("acme-losses:acme_l2") == spec
    x, t = torch.randn(3), torch.randn(3)
    result = evaluate(registry.get("acme_l2"), {"input": x, "target": t}, {"scale": 2.0})
    torch.testing.assert_close(result.loss, 2.0 * ((x - t) ** 2).sum())
    torch.testing.assert_close(result.grads["input"], 4.0 * (x - t))


def test_conflicting_names_stay_reachable_by_qualified_name(tmp_path, monkeypatch, caplog):
    mod_a, mod_b = _module_name("conflict_a"), _module_name("conflict_b")
    make_distribution(
        tmp_path / "a",
        "dist-a",
        {"twin": f"{mod_a}:twin"},
        {mod_a: "def twin(input):\n    return input.sum()\n"},
    )
    make_distribution(tmp_path / "b", "dist-b", {"twin": f"{mod_b}:twin"},
                      {mod_b: "def twin(input):\n    return 2 * input.sum()\n"})  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    with caplog.at_level(logging.WARNING, logger="lossreg.registry"):
        registry = LossRegistry.from_entry_points()
    assert registry.conflicts == {"twin": ["dist-a:twin", "dist-b:twin"]}
    assert "twin" in caplog.text and "dist-a:twin" in caplog.text
    with pytest.raises(AmbiguousLoss) as excinfo:
        registry.get("twin")
    assert excinfo.value.candidates == ["dist-a:twin", "dist-b:twin"]
    x = torch.ones(3)
    assert evaluate(registry.get("dist-a:twin"), {"input": x}).loss.item() == 3.0
    assert evaluate(registry.get("dist-b:twin"), {"input": x}).loss.item() == 6.0
    # the rest of the registry is unaffected
    assert registry.get("mse_loss").name == "mse_loss"


def test_broken_plugin_is_listed_unavailable_and_the_rest_works(plugin_path):
    broken, undescribable = _module_name("broken"), _module_name("undescribable")
    make_distribution(
        plugin_path,
        "shaky-losses",
        {"broken": f"{broken}:loss", "odd": f"{undescribable}:NOT_A_LOSS"},
        {broken: "import does_not_exist_anywhere\n", undescribable: "NOT_A_LOSS = 42\n"},
    )
    registry = LossRegistry.from_entry_points()
    failures = {f.name: f for f in registry.failures}
    assert set(failures) == {"broken", "odd"}
    assert "does_not_exist_anywhere" in failures["broken"].error
    assert "ModuleNotFoundError" in failures["broken"].traceback
    assert "not int" in failures["odd"].error
    spec = registry.spec("broken")
    assert spec.available is False and "does_not_exist_anywhere" in (spec.error or "")
    assert "broken" in {s.name for s in registry.list()}
    assert "broken" not in {s.name for s in registry.list(include_unavailable=False)}
    with pytest.raises(LossUnavailable, match="does_not_exist_anywhere"):
        registry.get("broken")
    assert registry.get("cross_entropy").name == "cross_entropy"


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_path):
    broken = _module_name("strict_broken")
    make_distribution(plugin_path, "strict-losses", {"bad": f"{broken}:loss"},
                      {broken: "raise RuntimeError('boom at import')\n"})  # fmt: skip
    with pytest.raises(PluginLoadError, match="boom at import"):
        LossRegistry.from_entry_points(strict=True)


def test_autoload_off_keeps_own_losses_and_named_plugins(plugin_path):
    mod = _module_name("optin")
    make_distribution(plugin_path, "opt-in", {"optin_loss": f"{mod}:f"},
                      {mod: "def f(input):\n    return input.sum()\n"})  # fmt: skip
    registry = LossRegistry.from_entry_points(autoload=False)
    assert "optin_loss" not in registry and "mse_loss" in registry
    registry = LossRegistry.from_entry_points(autoload=False, plugins=["opt-in"])
    assert "optin_loss" in registry


def test_deny_skips_before_import_and_allow_restricts(plugin_path):
    broken = _module_name("denied")
    make_distribution(plugin_path, "denied-dist", {"denied_loss": f"{broken}:loss"},
                      {broken: "raise RuntimeError('must not be imported')\n"})  # fmt: skip
    registry = LossRegistry.from_entry_points(deny=["denied_*"])
    assert "denied_loss" not in registry and not registry.failures
    registry = LossRegistry.from_entry_points(allow=["*margin*"], deny=["denied_*"])
    names = {s.name for s in registry.list()}
    assert names and all("margin" in n for n in names)


def test_list_filters_by_glob_exclude_and_tags():
    registry = LossRegistry.from_entry_points(allow=list(TORCH_LOSSES))
    names = [s.name for s in registry.list("*margin*")]
    assert names == sorted(names)
    assert set(names) == {n for n in TORCH_LOSSES if "margin" in n}
    assert "multi_margin_loss" not in {
        s.name for s in registry.list("*margin*", exclude=["multi*"])
    }
    seq = registry.list(tags=["sequence"])
    assert [s.name for s in seq] == ["ctc_loss"]
    assert {s.name for s in registry.list(["mse*", "l1*"])} == {"mse_loss", "l1_loss"}


def test_unknown_name_suggests_close_matches():
    registry = LossRegistry.from_entry_points()
    with pytest.raises(LossNotFound) as excinfo:
        registry.get("cross_entropi")
    assert "cross_entropy" in excinfo.value.suggestions
    assert "did you mean" in str(excinfo.value)
    assert excinfo.value.status_code == 404
