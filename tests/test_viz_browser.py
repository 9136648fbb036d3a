"""Reports rendered by a real browser: headless Chromium, when it is installed.

Nothing is installed here; without Chromium (Debian: ``apt-get install -y chromium``) the tests
are skipped. Chromium is driven through its command line (``--dump-dom``, ``--screenshot``), so
no Python package beyond the test suite's is needed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_viz_report import parse

from llmattr import LLMAttributionResult, VisualizationDataRecord, html_report, visualize_text
from llmattr.viz import palette

CHROMIUM = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        if (found := shutil.which(name))
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)",
)

# Each would leave a mark on <html> if it ever ran.
PWN_IMG = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','img')\">"
PWN_SCRIPT = "<script>document.documentElement.setAttribute('data-pwned','script')</script>"
TOKENS = ["The", " key", " of", " box", PWN_SCRIPT, "</div></section>", PWN_IMG, " is", "a&b"]
TARGETS = [" red", "</title><script>document.title='pwned'</script>", "."]


def _result() -> LLMAttributionResult:
    g = torch.Generator().manual_seed(3)
    seq = torch.randn(len(TOKENS), generator=g)
    seq[1], seq[3] = 5.0, -5.0  # one darkest red and one darkest blue token
    return LLMAttributionResult(
        seq,
        torch.randn(len(TARGETS), len(TOKENS), generator=g),
        TOKENS,
        TARGETS,
        torch.tensor([0.9, 0.05, 0.5]),
        "FeatureAblation",
        {"note": PWN_SCRIPT},
    )


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _dom(tmp_path: Path, page: str, name: str = "report.html") -> str:
    path = tmp_path / name
    path.write_text(page, encoding="utf-8")
    return _chromium(tmp_path, "--dump-dom", path.as_uri()).stdout


def _html_tag(dom: str) -> str:
    match = re.search(r"<html[^>]*>", dom)
    assert match, dom[:500]
    return match.group()


def test_report_renders_its_tokens_and_runs_only_its_own_script(tmp_path):
    r = _result()
    dom = _dom(tmp_path, html_report([r, r], titles=["first", "<b>second</b>"]))
    root = _html_tag(dom)
    assert 'data-llmattr="ready"' in root  # our script ran under the page's policy
    assert "data-pwned" not in root  # no token's markup ran
    tree = parse(dom)
    assert not tree.find_all("img") and "pwned" not in tree.find_all("title")[0].text
    sections = tree.find_all("section", "llmattr-result")
    assert len(sections) == 2 and all(s.attrs.get("data-ready") == "1" for s in sections)
    for section in sections:
        assert [c.text for c in section.find_all("span", "tok")] == TOKENS
        rows = section.find_all("tbody")[0].find_all("th", "row")
        assert [th.text for th in rows] == TARGETS
    assert [s.find_all("h2")[0].text for s in sections] == ["first", "<b>second</b>"]
    # Only the report's own two scripts per page, whatever the tokens contained.
    assert len(tree.find_all("script")) == 3  # two data blocks and the code


def test_report_is_not_blank_on_screen(tmp_path):
    path = tmp_path / "report.html"
    html_report(_result(), path=path)
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,800", path.as_uri())
    import matplotlib.image

    pixels = (matplotlib.image.imread(str(shot))[:, :, :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (800, 1000)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 50  # text, chips and the heatmap, not one flat colour

    def near(hex_colour: str) -> int:
        target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - target).max(axis=2) <= 3).sum())

    # The darkest red and blue chips (and legend ends) are painted.
    assert near(palette.colour(palette.LEVELS)) > 100
    assert near(palette.colour(-palette.LEVELS)) > 100


def test_hover_shows_value_and_probability_and_click_recolours_the_prompt(tmp_path):
    r = _result()
    r.seq_attr[0], r.seq_attr[2] = 1.5e-5, -2.5e-7  # titles in exponent notation
    page = html_report(r)
    titles = [c.attrs["title"] for c in parse(page).find_all("span", "tok")]
    assert titles[0] == "The: +1.500e-05" and titles[2] == " of: -2.500e-07"
    probe = """(function () {
  var sec = document.querySelector("section.llmattr-result");
  var cell = sec.querySelectorAll("tbody tr")[2].querySelectorAll("td")[1];
  cell.dispatchEvent(new MouseEvent("mouseover", {bubbles: true, clientX: 5, clientY: 5}));
  var tip = document.querySelector(".llmattr-tip");
  var chips = sec.querySelectorAll(".prompt .tok");
  function put(id, text) {
    var out = document.createElement("pre"); out.id = id; out.textContent = text;
    document.body.appendChild(out);
  }
  put("probe-tip", tip.textContent);
  put("probe-shown", tip.style.display + " " + chips[1].className);
  sec.querySelectorAll("tbody th.row")[2].dispatchEvent(new MouseEvent("click", {bubbles: true}));
  put("probe-classes", Array.prototype.map.call(chips, function (c) { return c.className; })
    .join(","));
  put("probe-caption", sec.querySelector(".legend.seq .note").textContent);
  sec.querySelectorAll("tbody th.row")[2].dispatchEvent(new MouseEvent("click", {bubbles: true}));
  put("probe-back", Array.prototype.map.call(chips, function (c) { return c.className; })
    .join(","));
  put("probe-titles", Array.prototype.map.call(chips, function (c) { return c.title; })
    .join("|"));
})();"""
    digest = base64.b64encode(hashlib.sha256(probe.encode()).digest()).decode()
    page = page.replace("script-src ", f"script-src 'sha256-{digest}' ", 1)
    page = page.replace("</body>", f"<script>{probe}</script></body>")
    tree = parse(_dom(tmp_path, page, "probe.html"))
    probes = {node.attrs["id"]: node.text for node in tree.find_all("pre")}

    value, p = r.token_attr[2, 1].item(), r.output_probs[2].item()
    assert probes["probe-tip"] == (f'"." \u2190 " key"\nattribution {value:+.4f}\np(".") = {p:.4f}')
    assert probes["probe-shown"] == "block tok q20 hl"  # the hovered column's prompt token

    def classes(values: torch.Tensor, limit: float) -> str:
        return ",".join(f"tok q{palette.level(v, limit) + palette.LEVELS}" for v in values.tolist())

    assert probes["probe-classes"] == classes(r.token_attr[2], r.token_attr.abs().max().item())
    assert probes["probe-caption"] == 'colour: attribution to target token 3 "."'
    assert probes["probe-back"] == classes(r.seq_attr, r.seq_attr.abs().max().item())
    assert probes["probe-titles"].split("|") == titles  # the script formats as Python does


def test_visualize_text_page_renders_escaped_words(tmp_path):
    path = tmp_path / "text.html"
    record = VisualizationDataRecord(
        torch.linspace(-1, 1, len(TOKENS)), 0.9, "pos", "pos", "pos", 0.5, TOKENS, None
    )
    visualize_text([record], path=path)
    dom = _chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
    assert "data-pwned" not in _html_tag(dom)
    words = parse(dom).find_all("td")[-1].find_all("span")
    assert [w.text for w in words] == TOKENS
