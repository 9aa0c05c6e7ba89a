"""The loss explorer in headless chromium against a real ``lossreg serve``: the catalog and its
filters, curves whose numbers are the API's and local torch's, the snippets run as pasted,
non-finite regions, the API-key prompt. Screenshots are written as test artifacts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from .conftest import API_KEY, ROOT

pytestmark = pytest.mark.timeout(180)


def _open(page: Any, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")


def _names(page: Any) -> list[str]:
    return page.eval_on_selector_all("#loss-list li", "els => els.map(e => e.dataset.name)")


def _curves(page: Any) -> list[dict[str, Any]]:
    return json.loads(page.get_attribute("#plots", "data-curves") or "[]")


def _wait_for_curves(page: Any, count: int) -> list[dict[str, Any]]:
    page.wait_for_function(
        f"() => JSON.parse(document.getElementById('plots').dataset.curves || '[]').length === "
        f"{count}"
    )
    return _curves(page)


def _choose(page: Any, name: str) -> None:
    page.click(f"#loss-list li[data-name='{name}']")
    page.wait_for_selector(f"#card[data-name='{name}']")


def _api_sweep(url: str, curve: dict[str, Any], start: float, stop: float, points: int) -> Any:
    body = {
        "inputs": curve["inputs"],
        "params": curve["params"],
        "sweep": {**curve["sweep"], "start": start, "stop": stop, "points": points},
        "nonfinite": "allow",
    }
    r = httpx.post(f"{url}/v1/losses/{curve['loss']}/sweep", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_page_loads_with_the_catalog_and_no_console_errors(
    page: Any, live_url: str, artifacts: Path
) -> None:
    _open(page, live_url)
    listing = httpx.get(f"{live_url}/v1/losses").json()["losses"]
    available = [s["name"] for s in listing if s["available"]]
    assert _names(page) == available and "cross_entropy" in available
    # the plugin installed for this server shows up, with its origin, and so does the broken one
    assert "charbonnier" in _names(page)
    _choose(page, "charbonnier")
    card = page.inner_text("#card")
    assert "explorer-demo-losses 2.3.1" in card and "eps" in card and "Charbonnier" in card
    assert page.is_visible("#unavailable")
    page.click("#unavailable summary")
    broken = page.inner_text("#unavailable-list li[data-name='broken_loss']")
    assert "broken_mod needs a GPU runtime" in broken
    page.screenshot(path=str(artifacts / "catalog.png"), full_page=True)
    assert page.console.messages == []


def test_filters_narrow_the_catalog(page: Any, live_url: str) -> None:
    _open(page, live_url)
    everything = _names(page)
    page.fill("#filter-name", "*dice*")
    page.wait_for_selector("#loss-list[data-query='pattern=*dice*']")
    dice = _names(page)
    assert dice and len(dice) < len(everything) and all("dice" in n for n in dice)
    expected = httpx.get(f"{live_url}/v1/losses", params={"pattern": "*dice*"}).json()
    assert dice == [s["name"] for s in expected["losses"] if s["available"]]
    page.fill("#filter-name", "")
    page.select_option("#filter-tag", "regression")
    page.wait_for_selector("#loss-list[data-query='tag=regression']")
    tagged = _names(page)
    assert "mse_loss" in tagged and "cross_entropy" not in tagged
    assert page.console.messages == []


def _focal(x: torch.Tensor, y: int, gamma: float) -> torch.Tensor:
    log_p = x.log_softmax(-1)[y]
    return -((1 - log_p.exp()) ** gamma) * log_p


def test_cross_entropy_and_focal_curves_equal_the_api_and_torch(
    page: Any, live_url: str, artifacts: Path
) -> None:
    _open(page, live_url)
    _choose(page, "cross_entropy")
    assert page.input_value("#scenario") == "classification"
    page.fill("#x-points", "61")
    page.click("#add-curve")
    _wait_for_curves(page, 1)
    _choose(page, "focal")
    assert page.input_value("#scenario") == "classification"  # kept: same axes
    page.select_option("#compare-param", "gamma")
    page.fill("#compare-values", "2, 5")
    page.click("#add-curve")
    curves = _wait_for_curves(page, 3)
    assert [c["label"] for c in curves] == [
        "cross_entropy",
        "focal (gamma=2)",
        "focal (gamma=5)",
    ]
    legend = page.inner_text("#plot-value .u-legend")
    assert "focal (gamma=5)" in legend and "cross_entropy" in legend
    start, stop = float(page.input_value("#x-start")), float(page.input_value("#x-stop"))
    assert (start, stop) == (-6.0, 6.0)
    for curve in curves:
        assert len(curve["x"]) == 61 and curve["nonfinite"] == []
        api = _api_sweep(live_url, curve, start, stop, 61)
        assert curve["x"] == api["x"] and curve["value"] == api["loss"]
        assert curve["grad"] == api["grad"]
        logits = np.array(curve["inputs"]["input"]["data"], np.float32)
        target = curve["inputs"]["target"]["data"][0]
        swept = curve["sweep"]["index"][1]
        for x, value, grad in zip(curve["x"], curve["value"], curve["grad"]):
            leaf = torch.tensor(logits).clone()
            leaf[swept] = x
            leaf.requires_grad_(True)
            if curve["loss"] == "cross_entropy":
                local = F.cross_entropy(leaf[None], torch.tensor([target]))
            else:
                local = _focal(leaf, target, curve["params"]["gamma"])
            (g,) = torch.autograd.grad(local, leaf)
            assert value == pytest.approx(local.item(), rel=1e-5, abs=1e-6)
            assert grad == pytest.approx(g[swept].item(), rel=1e-4, abs=1e-6)
    # the table view shows the same numbers
    page.check("#table-toggle")
    row = page.eval_on_selector_all(
        "#curve-table tbody tr:nth-child(11) td", "els => els.map(e => e.textContent)"
    )
    assert float(row[0]) == curves[0]["x"][10]
    assert float(row[5]) == curves[2]["value"][10] and float(row[6]) == curves[2]["grad"][10]
    page.uncheck("#table-toggle")
    page.hover("#plot-value .u-over", position={"x": 420, "y": 60})
    page.screenshot(path=str(artifacts / "explorer.png"), full_page=True)
    assert page.console.messages == []


def _run(cmd: list[str], timeout: float = 60, **kwargs: Any) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_copied_snippets_work_when_pasted(page: Any, live_url: str, tmp_path: Path) -> None:
    _open(page, live_url)
    _choose(page, "huber_loss")
    assert page.input_value("#scenario") == "regression"
    page.fill("#param-delta", "0.5")
    page.fill("#x-points", "41")
    page.click("#add-curve")
    (curve,) = _wait_for_curves(page, 1)
    page.hover("#plot-value .u-over", position={"x": 150, "y": 50})
    idx = int(page.get_attribute("#cursor-point", "data-idx"))
    assert 0 < idx < 20  # left of the middle: where the pointer is
    x = curve["x"][idx]

    page.click("#curve-list li[data-index='0'] .copy-curl")
    curl = page.input_value("#snippet")
    assert "curl" in curl and f"{x}" in curl
    out = json.loads(_run(["bash", "-c", curl]))  # exactly as pasted into a shell
    assert np.float32(out["loss"]) == np.float32(curve["value"][idx])
    grad = out["grads"]["input"]  # typed, as its input was sent: {"dtype", "shape", "data"}
    assert grad["shape"] == [1] and curve["sweep"]["index"] == [0]
    assert np.float32(grad["data"][0]) == np.float32(curve["grad"][idx])

    page.click("#curve-list li[data-index='0'] .copy-python")
    python = page.input_value("#snippet")
    assert "lossreg.Client" in python
    script = tmp_path / "pasted.py"
    script.write_text(python)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    printed = _run([sys.executable, str(script)], env=env)
    match = re.fullmatch(r"loss (\S+) grad (\S+)\n", printed)
    assert match, printed
    assert np.float32(float(match[1])) == np.float32(curve["value"][idx])
    assert np.float32(float(match[2])) == np.float32(curve["grad"][idx])
    assert page.console.messages == []


def test_every_loss_plots_in_every_scenario_offered(page: Any, live_url: str) -> None:
    _open(page, live_url)
    defaults = {}
    for name in _names(page):
        _choose(page, name)
        offered = page.eval_on_selector_all("#scenario option", "els => els.map(e => e.value)")
        defaults[name] = offered[0]
        for scenario in offered:
            page.select_option("#scenario", scenario)
            page.click("#clear-curves")
            page.click("#add-curve")
            (curve,) = _wait_for_curves(page, 1)
            assert not page.is_visible("#message"), (name, scenario, page.inner_text("#message"))
            assert curve["loss"] == name and curve["scenario"] == scenario
            assert any(v is not None for v in curve["value"]), (name, scenario)
    assert defaults["cross_entropy"] == "classification" and defaults["focal"] == "classification"
    assert defaults["dice"] == defaults["lovasz_hinge"] == "segmentation"
    assert defaults["binary_cross_entropy"] == "probability"
    assert defaults["margin_ranking_loss"] == "pair"
    assert defaults["triplet_margin_loss"] == "triplet"
    assert defaults["mse_loss"] == defaults["charbonnier"] == "regression"  # the plugin too
    assert page.console.messages == []


def test_changing_the_range_recomputes_every_curve_on_one_axis(page: Any, live_url: str) -> None:
    _open(page, live_url)
    _choose(page, "mse_loss")
    page.fill("#x-points", "21")
    page.click("#add-curve")
    _wait_for_curves(page, 1)
    _choose(page, "huber_loss")
    page.fill("#x-start", "-1")
    page.fill("#x-points", "31")
    page.click("#add-curve")
    mse, huber = _wait_for_curves(page, 2)
    page.wait_for_function(
        "() => JSON.parse(document.getElementById('plots').dataset.curves)[0].x.length === 31"
    )
    mse, huber = _curves(page)
    assert mse["x"] == huber["x"] and len(mse["x"]) == 31 and mse["x"][0] == -1.0
    assert mse["value"] == _api_sweep(live_url, mse, -1.0, 3.0, 31)["loss"]
    assert page.console.messages == []


def test_nonfinite_regions_are_marked_not_drawn(page: Any, live_url: str, tmp_path: Path) -> None:
    _open(page, live_url)
    _choose(page, "mse_loss")
    page.fill("#x-start", "0")
    page.fill("#x-stop", "4e19")  # (x - 0)^2 passes float32's 3.4e38 past x = 1.8e19
    page.fill("#x-points", "9")
    page.click("#add-curve")
    (curve,) = _wait_for_curves(page, 1)
    assert curve["nonfinite"] == ["loss"]
    bad = [x for x, v in zip(curve["x"], curve["value"]) if v is None]
    assert bad and min(bad) > 1.8e19 and all(v is not None for v in curve["grad"])
    note = page.inner_text("#nonfinite-note")
    assert "mse_loss" in note and "loss non-finite" in note and f"{len(bad)} point" in note
    page.check("#table-toggle")
    assert page.locator("#curve-table td", has_text="non-finite").count() == len(bad)
    # the snippets for a point where the loss overflows ask the server to allow it, and run
    page.uncheck("#table-toggle")
    width = page.locator("#plot-value .u-over").bounding_box()["width"]
    page.hover("#plot-value .u-over", position={"x": width - 2, "y": 40})
    idx = int(page.get_attribute("#cursor-point", "data-idx"))
    assert idx == len(curve["x"]) - 1 and curve["value"][idx] is None
    page.click("#curve-list li[data-index='0'] .copy-curl")
    out = json.loads(_run(["bash", "-c", page.input_value("#snippet")]))
    assert out["loss"] is None and out["nonfinite"] == ["loss"]
    assert np.float32(out["grads"]["input"]["data"][0]) == np.float32(curve["grad"][idx])
    page.click("#curve-list li[data-index='0'] .copy-python")
    script = tmp_path / "pasted.py"
    script.write_text(page.input_value("#snippet"))
    printed = _run([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert printed.startswith("loss inf grad ")
    assert np.float32(float(printed.split()[-1])) == np.float32(curve["grad"][idx])
    assert page.console.messages == []  # before the test's own canvas readbacks (Chromium warns)
    # shaded on the loss plot where the loss is non-finite, not where it is finite
    assert _shade(page, "plot-value", 0.97) and not _shade(page, "plot-value", 0.1)
    assert not _shade(page, "plot-grad", 0.97)  # the gradient is finite everywhere


def _shade(page: Any, plot: str, fraction: float) -> bool:
    """Whether the plot's canvas is shaded red at ``fraction`` of the x range, mid-height."""
    r, g, b = page.evaluate(
        """([plot, fraction]) => {
            const canvas = document.querySelector(`#${plot} canvas`);
            const over = document.querySelector(`#${plot} .u-over`).getBoundingClientRect();
            const box = canvas.getBoundingClientRect();
            const scale = canvas.width / box.width;
            const x = (over.left - box.left + fraction * over.width) * scale;
            const y = (over.top - box.top + over.height / 2) * scale;
            return Array.from(canvas.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3));
        }""",
        [plot, fraction],
    )
    return r > g + 20 and r > b + 20


def test_api_key_prompt(page: Any, keyed_url: str, artifacts: Path) -> None:
    page.goto(keyed_url + "/")
    page.wait_for_selector("#key-form:not([hidden])")
    assert "API key" in page.inner_text("#message")
    assert _names(page) == []
    page.screenshot(path=str(artifacts / "api-key-prompt.png"), full_page=True)
    page.fill("#api-key", "not-the-key")
    page.click("#key-form button")
    page.wait_for_function(
        "() => document.getElementById('key-reason').textContent.includes('refused')"
    )
    assert page.is_visible("#key-form")
    page.fill("#api-key", API_KEY)
    page.click("#key-form button")
    page.wait_for_selector("body[data-ready=true]")
    assert "cross_entropy" in _names(page) and not page.is_visible("#key-form")
    _choose(page, "mse_loss")
    page.click("#add-curve")
    (curve,) = _wait_for_curves(page, 1)
    assert curve["value"][len(curve["x"]) // 2] == 0.0  # x = target: a real answer, keyed
    page.click("#curve-list li[data-index='0'] .copy-curl")
    curl = page.input_value("#snippet")
    assert API_KEY not in curl  # the snippet reads the key from the environment
    keyed = {**os.environ, "LOSSREG_API_KEY": API_KEY}
    out = json.loads(_run(["bash", "-c", curl], env=keyed))
    idx = int(page.get_attribute("#cursor-point", "data-idx"))
    assert np.float32(out["loss"]) == np.float32(curve["value"][idx])
    # the only console noise is the browser reporting the two refused requests
    assert page.console.messages and all("401" in m for m in page.console.messages)


def test_the_same_curves_in_firefox(
    firefox: tuple[str, str], live_url: str, artifacts: Path
) -> None:
    """Firefox (over WebDriver BiDi, driven by puppeteer-core) plots the API's numbers too."""
    binary, puppeteer = firefox
    script = Path(__file__).with_name("firefox_smoke.cjs")
    shot = artifacts / "explorer-firefox.png"
    command = ["node", str(script), live_url, binary, puppeteer, str(shot)]
    out = json.loads(_run(command, timeout=150))
    assert out["console"] == [] and "charbonnier" in out["names"]
    assert [c["label"] for c in out["curves"]] == [
        "cross_entropy",
        "focal (gamma=2)",
        "focal (gamma=5)",
    ]
    start, stop, points = out["grid"]
    for curve in out["curves"]:
        api = _api_sweep(live_url, curve, start, stop, int(points))
        assert curve["value"] == api["loss"] and curve["grad"] == api["grad"]
    assert len(out["canvases"]) == 2 and all(w > 400 and h > 100 for w, h in out["canvases"])
    assert shot.stat().st_size > 10_000
