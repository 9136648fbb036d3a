"""The report's script in a real browser (headless Chromium, skipped without it): infinities
survive the JSON data block, so recolouring the prompt keeps them at the strongest colour."""

from __future__ import annotations

import base64
import hashlib
import math

import torch
from test_viz_browser import _dom, pytestmark  # noqa: F401 (skips without Chromium)
from test_viz_report import parse

from llmattr import LLMAttributionResult, html_report
from llmattr.viz import palette

PROBE = """(function () {
  var sec = document.querySelector("section.llmattr-result");
  var chips = sec.querySelectorAll(".prompt .tok"), row = sec.querySelector("tbody th.row");
  function put(id, text) {
    var out = document.createElement("pre"); out.id = id; out.textContent = text;
    document.body.appendChild(out);
  }
  function state() {
    return Array.prototype.map.call(chips, function (c) { return c.className + "|" + c.title; })
      .join(",");
  }
  row.dispatchEvent(new MouseEvent("click", {bubbles: true}));
  put("probe-row", state());
  row.dispatchEvent(new MouseEvent("click", {bubbles: true}));
  put("probe-back", state());
})();"""


def test_recolouring_keeps_infinities_at_the_strongest_colour(tmp_path):
    inf = math.inf
    r = LLMAttributionResult(
        torch.tensor([1.0, inf, -inf, math.nan]),
        torch.tensor([[-inf, inf, 0.5, math.nan]]),
        ["a", "b", "c", "d"],
        ["x"],
        torch.tensor([0.5]),
        "FeatureAblation",
        {},
    )
    page = html_report(r)
    before = ",".join(
        f"{' '.join(c.classes)}|{c.attrs['title']}" for c in parse(page).find_all("span", "tok")
    )
    digest = base64.b64encode(hashlib.sha256(PROBE.encode()).digest()).decode()
    page = page.replace("script-src ", f"script-src 'sha256-{digest}' ", 1)
    page = page.replace("</body>", f"<script>{PROBE}</script></body>")
    probes = {n.attrs["id"]: n.text for n in parse(_dom(tmp_path, page)).find_all("pre")}
    top, mid = 2 * palette.LEVELS, palette.LEVELS
    assert probes["probe-row"] == (
        f"tok q0|a: -inf,tok q{top}|b: +inf,tok q{top}|c: +0.5000,tok q{mid}|d: nan"
    )
    assert probes["probe-back"] == before
    assert before == f"tok q{top}|a: +1.0000,tok q{top}|b: +inf,tok q0|c: -inf,tok q{mid}|d: nan"
