"""The explorer in a real headless Chromium, driven through chromedriver's W3C WebDriver HTTP API
(a small client below: no selenium). Skipped when chromium or chromedriver is not installed
(Debian: ``apt-get install -y chromium chromium-driver``).

The table renders, a filter narrows it, sorting orders it, a click shows that example's tokens,
the page's feature averages equal :func:`aggregate`'s, no script smuggled in through a prompt,
a metadata value, an id or a token runs, and 10,000 examples load and filter in well under a
second (the page's own ``performance.now()`` timings, printed).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from test_viz_explorer import PWN, demo_records, synthetic, write_results

from llmattr.viz.explorer import explore, write_explorer
from llmattr.viz.explorer_assets import ROWS_PER_PAGE
from llmattr.viz.explorer_data import aggregate
from llmattr.viz.tokens import display_tokens

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs chromium and chromedriver (Debian: apt-get install -y chromium chromium-driver)",
)
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


class WebDriver:
    """Just enough of the W3C WebDriver protocol: a headless Chromium session."""

    def __init__(self, profile: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [str(CHROMEDRIVER), f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
            options = {
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,900",
                ]
            }  # fmt: skip
            caps = {"browserName": "chrome", "goog:chromeOptions": options}
            made = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            self.session = f"/session/{made['sessionId']}"
        except BaseException:
            self.proc.kill()
            raise

    def _wait_ready(self) -> None:
        for _ in range(200):
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise RuntimeError("chromedriver did not start")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method} {path}: {error.read()[:500]!r}") from None

    def do(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, self.session + path, body)

    def get(self, url: str) -> None:
        self.do("POST", "/url", {"url": url})

    def find_all(self, css: str) -> list[str]:
        found = self.do("POST", "/elements", {"using": "css selector", "value": css})
        return [f[ELEMENT] for f in found]

    def find(self, css: str) -> str:
        return self.do("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, element: str) -> None:
        self.do("POST", f"/element/{element}/click", {})

    def type(self, element: str, text: str) -> None:
        self.do("POST", f"/element/{element}/value", {"text": text})

    def text(self, element: str) -> str:
        return self.do("GET", f"/element/{element}/text")

    def script(self, code: str, *args: Any) -> Any:
        return self.do("POST", "/execute/sync", {"script": code, "args": list(args)})

    def screenshot(self) -> bytes:
        import base64

        return base64.b64decode(self.do("GET", "/screenshot"))

    def quit(self) -> None:
        try:
            self.do("DELETE", "")
        finally:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = WebDriver(tmp_path_factory.mktemp("profile"))
    yield driver
    driver.quit()


def open_page(browser: WebDriver, path: Path) -> None:
    browser.get(path.as_uri())
    assert browser.script("return document.documentElement.dataset.llmattrExplorer") == "ready"


def cells(browser: WebDriver, column: int) -> list[str]:
    """The text of one column of the table's drawn rows."""
    return browser.script(
        "return [...document.querySelectorAll('#rows tr')].map(r => r.cells[arguments[0]]"
        ".textContent)",
        column,
    )


def column(browser: WebDriver, name: str) -> int:
    heads = browser.script(
        "return [...document.querySelectorAll('#head th')].map(t => t.textContent)"
    )
    return [h.rstrip(" ▲▼") for h in heads].index(name)


def chips(browser: WebDriver) -> list[str]:
    return browser.script(
        "return [...document.querySelectorAll('#detail .prompt .tok')].map(c => c.textContent)"
    )


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    records = list(demo_records())
    return records, write_explorer(write_results(folder / "r.jsonl", records), folder / "e.html")


def test_table_filter_sort_and_selection(browser, demo_page):
    records, page = demo_page
    open_page(browser, page)
    assert len(browser.find_all("#rows tr")) == len(records)
    assert cells(browser, column(browser, "id")) == [r["id"] for r in records]
    # The first example is shown; clicking a row shows that example's tokens.
    assert chips(browser) == display_tokens(records[0]["result"]["input_tokens"])
    browser.click(browser.find_all("#rows tr")[5])
    assert browser.text(browser.find("#detail h2")) == records[5]["id"]
    assert chips(browser) == display_tokens(records[5]["result"]["input_tokens"])
    heat = browser.script("return document.querySelectorAll('#detail table.hm tbody td').length")
    assert heat == len(records[5]["result"]["input_tokens"])  # one target token
    down = (
        "document.body.dispatchEvent(new KeyboardEvent('keydown',"
        " {key: arguments[0], bubbles: true}))"
    )
    browser.script(down, "ArrowDown")  # the arrow keys walk the table
    assert browser.text(browser.find("#detail h2")) == records[6]["id"]
    assert browser.text(browser.find("#rows tr.sel td:nth-child(2)")) == records[6]["id"]
    browser.script(down, "ArrowUp")
    assert browser.text(browser.find("#detail h2")) == records[5]["id"]
    # Free text narrows to the prompts that contain it.
    browser.type(browser.find("#q"), "smaller")
    want = [r["id"] for r in records if "smaller" in r["prompt"]]
    assert 0 < len(want) < len(records)
    assert cells(browser, column(browser, "id")) == want
    assert browser.text(browser.find("#count")) == f"{len(want)} of {len(records)} examples"
    # A metadata choice narrows too (with the text filter cleared).
    browser.do("POST", f"/element/{browser.find('#q')}/clear", {})
    browser.script("document.getElementById('q').dispatchEvent(new Event('input'))")
    browser.script(
        "var s = document.querySelector('select[data-key=\"0\"]'); s.value = 'recall';"
        "s.dispatchEvent(new Event('change'))"
    )
    assert cells(browser, column(browser, "task")) == ["recall"] * sum(
        r["meta"]["task"] == "recall" for r in records
    )
    # Sorting: p(target) descending on the first click, ascending on the second.
    browser.script(
        "var s = document.querySelector('select[data-key=\"0\"]'); s.value = '\\u0000any';"
        "s.dispatchEvent(new Event('change'))"
    )
    p = column(browser, "p(target)")
    browser.click(browser.find_all("#head th")[p])
    shown = [float(v) for v in cells(browser, p)]
    assert len(shown) == len(records) and shown == sorted(shown, reverse=True)
    browser.click(browser.find_all("#head th")[p])
    assert [float(v) for v in cells(browser, p)] == sorted(shown)
    words = column(browser, "n_words")
    browser.click(browser.find_all("#head th")[words])
    assert [float(v) for v in cells(browser, words)] == sorted(
        (r["meta"]["n_words"] for r in records), reverse=True
    )


def test_page_feature_averages_equal_the_python_ones(browser, demo_page):
    records, page = demo_page
    open_page(browser, page)
    for by, j in ((None, -1), ("task", 0)):
        page_groups = browser.script("return window.llmattrAggregate(arguments[0], 2)", j)
        want = aggregate(records, by=by, min_count=2)
        assert {g["group"] for g in page_groups} == set(want)
        for g in page_groups:
            got = {f["feature"]: f for f in g["features"]}
            assert set(got) == {s.feature for s in want[g["group"]]}
            for s in want[g["group"]]:
                f = got[s.feature]
                assert (f["count"], f["examples"]) == (s.count, s.examples)
                assert f["mean"] == pytest.approx(s.mean, rel=1e-5, abs=1e-9)
                assert f["mean_abs"] == pytest.approx(s.mean_abs, rel=1e-5)
    # The tab draws one table per group, the largest mean |attribution| first.
    browser.click(browser.find(".tabs button[data-tab=features]"))
    browser.script(
        "var s = document.getElementById('groupby'); s.value = '0';"
        "s.dispatchEvent(new Event('change'))"
    )
    groups = browser.script(
        "return [...document.querySelectorAll('#agg .group')].map(g => [g.dataset.group,"
        " [...g.querySelectorAll('tbody tr')].map(r => r.cells[0].textContent)])"
    )
    assert {g for g, _ in groups} == {"recall", "compare"}
    for g, shown in groups:
        assert shown == [s.feature for s in aggregate(records, by="task")[g]][: len(shown)]


def test_no_script_injected_through_the_data_runs(browser, tmp_path):
    names = [PWN, "<script>document.documentElement.setAttribute('data-pwned','2')</script>", "x"]
    records = [
        synthetic(
            names, [1.0, -2.0, 0.5], 0, {"label": PWN, "<b>k</b>": PWN}, rows=[[1, 0, 2]], rid=PWN
        ),
        synthetic(["a", PWN], [0.1, 3.0], 1, {"label": "<b>y</b>"}, rows=[[0.0, 1.0]]),
    ]
    records[0]["prompt"] = PWN
    records[1]["result"]["output_tokens"] = [PWN]
    records.append({"id": "e", "index": 2, "prompt": PWN, "target": None, "meta": {}, "error": PWN})
    page = write_explorer(
        write_results(tmp_path / "r.jsonl", records, {"model": PWN}), tmp_path / "e.html", PWN
    )
    open_page(browser, page)
    for k, record in enumerate(records):
        browser.click(browser.find_all("#rows tr")[k])
        assert browser.text(browser.find("#detail h2")) == record["id"]
    assert PWN in browser.text(browser.find("#detail .err"))
    browser.click(browser.find_all("#rows tr")[0])
    assert chips(browser) == names  # shown as text
    browser.click(browser.find_all("#rows tr")[1])
    browser.click(browser.find("#detail table.hm tbody th.row"))  # recolour by the target
    assert browser.script("return document.querySelector('#detail th.row.sel').textContent") == PWN
    browser.click(browser.find(".tabs button[data-tab=features]"))
    browser.script(
        "var s = document.getElementById('groupby'); s.value = '0';"
        "s.dispatchEvent(new Event('change'))"
    )
    assert browser.script("return document.documentElement.getAttribute('data-pwned')") is None
    assert browser.script("return document.querySelectorAll('img, b, body script').length") == 2
    assert browser.script("return document.title") == PWN
    head = browser.script("return document.getElementById('head').textContent")
    assert "<b>k</b>" in head  # a hostile metadata key, as text
    assert PWN in browser.script("return document.getElementById('agg').textContent")


def big_results(path: Path, n: int = 10_000, length: int = 100, words: int = 120_000) -> Path:
    """A results file written directly (no attribution): ``n`` examples of ``length`` tokens
    drawn from ``words`` distinct words, 3 target tokens, metadata "fold" (50 values) and
    "task" (7)."""
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, words, (n, length))
    seq, rows = (
        np.round(rng.normal(size=(n, length)), 4),
        np.round(rng.normal(size=(n, 3 * length)), 3),
    )
    lines = [json.dumps({"llmattr_results": 1, "settings": {"model": "m", "method": "FA"}})]
    for i in range(n):
        names = [f"w{k}" for k in tokens[i].tolist()]
        result = {
            "seq_attr": {"dtype": "float64", "shape": [length], "data": seq[i].tolist()},
            "token_attr": {"dtype": "float64", "shape": [3, length], "data": rows[i].tolist()},
            "input_tokens": names, "output_tokens": ["a", "b", "c"], "method": "FA", "info": {},
            "output_probs": {"dtype": "float64", "shape": [3], "data": [0.5, 0.4, 0.3]},
        }  # fmt: skip
        meta = {"fold": i % 50, "task": f"t{i % 7}"}
        lines.append(json.dumps({"id": f"ex-{i}", "index": i, "prompt": " ".join(names),
                                 "target": "abc", "meta": meta, "result": result}))  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ten_thousand_examples_with_a_large_vocabulary_stay_fast(browser, tmp_path):
    page = write_explorer(big_results(tmp_path / "r.jsonl"), tmp_path / "e.html")
    size = page.stat().st_size
    open_page(browser, page)
    load = float(browser.script("return document.documentElement.dataset.loadMs"))
    init = float(browser.script("return document.documentElement.dataset.initMs"))
    assert len(browser.find_all("#rows tr")) == ROWS_PER_PAGE
    browser.click(browser.find("#next"))
    shown = cells(browser, column(browser, "id"))
    assert shown == [f"ex-{i}" for i in range(ROWS_PER_PAGE, 2 * ROWS_PER_PAGE)]
    browser.click(browser.find("#prev"))
    browser.type(browser.find("#q"), "w12")
    filtered = float(browser.script("return document.documentElement.dataset.filterMs"))
    n = int(browser.text(browser.find("#count")).split()[0])
    assert 0 < n < 10_000
    timed = (
        "var t = performance.now(); document.querySelector('.tabs button[data-tab=features]')"
        ".click(); var all = performance.now() - t, s = document.getElementById('groupby');"
        "s.value = arguments[0]; t = performance.now(); s.dispatchEvent(new Event('change'));"
        "return [all, performance.now() - t, document.querySelectorAll('#agg .group').length,"
        " document.querySelectorAll('#agg .group tbody tr').length]"
    )
    everything, grouped, groups, rows = browser.script(timed, "0")  # by fold: 50 groups
    assert groups == 12 and rows == 12 * 25  # the largest 12 groups, their top 25 each
    print(
        f"\n10,000 examples x 100 tokens, 120,000 words: {size / 1e6:.1f} MB page, load"
        f" {load:.0f} ms (script {init:.0f} ms), one filter {filtered:.1f} ms, feature averages"
        f" {everything:.1f} ms, grouped by fold {grouped:.1f} ms"
    )
    # The page's own work stays under a second; the parse of the file varies with the machine.
    assert init + filtered + grouped < 1000 and load < 5000
    # Over all examples, each drawn top 25 is the head of a full sort of its group.
    browser.script("var q = document.getElementById('q'); q.value = '';"
                   "q.dispatchEvent(new Event('input'))")  # fmt: skip
    drawn = browser.script(
        "return [...document.querySelectorAll('#agg .group')].slice(0, 2).map(g => "
        "[g.dataset.group, [...g.querySelectorAll('tbody tr')].map(r => r.cells[0].textContent)])"
    )
    full = (
        "var g = window.llmattrAggregate(0, 1).find(g => g.group === arguments[0]);"
        "g.features.sort((a, b) => b.mean_abs - a.mean_abs || (a.feature < b.feature ? -1 : 1));"
        "return g.features.slice(0, 25).map(f => f.feature)"
    )
    assert len(drawn) == 2
    for group, shown in drawn:
        assert shown == browser.script(full, group)


def test_image_example_shows_its_pictures_and_modality_shares(browser, tmp_path):
    from test_viz_explorer import image_result

    from llmattr import LLMAttributionResult
    from llmattr.viz.explorer import image_record

    image = image_result()
    text = LLMAttributionResult(torch.ones(2), None, ["a", "b"], ["c"], torch.tensor([0.5]))
    open_page(browser, explore([image, text], tmp_path / "e.html"))
    sources = browser.script("return [...document.querySelectorAll('#detail img')].map(i => i.src)")
    want = image_record(image)
    assert sources == [want["overlay"], want["image"]]
    widths = "return [...document.querySelectorAll('#detail img')].map(i => i.naturalWidth)"
    for _ in range(100):  # data: images decode asynchronously
        if browser.script(widths) == [16, 16]:
            break
        time.sleep(0.05)
    assert browser.script(widths) == [16, 16]  # the PNGs decode under the page's policy
    assert (
        browser.text(browser.find("#detail .shares"))
        == "share of |attribution|: image 100% · text 0%"
    )
    browser.click(browser.find_all("#rows tr")[1])
    assert (
        browser.script("return document.querySelectorAll('#detail img, #detail .shares').length")
        == 0
    )


def test_metadata_values_named_like_object_members_group_and_filter(browser, tmp_path):
    values = ["constructor", "toString", "__proto__", "hasOwnProperty", "x"]
    records = [
        synthetic(["a", "b"], [1.0, float(k + 1)], k, {"label": v}) for k, v in enumerate(values)
    ]
    records.append(synthetic(["a"], [2.0], len(values), {"label": "__proto__"}))
    page = write_explorer(write_results(tmp_path / "r.jsonl", records), tmp_path / "e.html")
    open_page(browser, page)
    options = browser.script(
        "return [...document.querySelectorAll('select[data-key=\"0\"] option')].map(o => o.value)"
    )
    assert sorted(options[1:]) == sorted(values)  # "(any)" first, then every value
    page_groups = browser.script("return window.llmattrAggregate(0, 1)")
    want = aggregate(records, by="label")
    assert {g["group"]: g["size"] for g in page_groups} == {
        "__proto__": 2,
        **{v: 1 for v in values if v != "__proto__"},
    }
    for g in page_groups:
        got = {f["feature"]: (f["count"], f["mean"]) for f in g["features"]}
        assert got == {s.feature: (s.count, pytest.approx(s.mean)) for s in want[g["group"]]}
    browser.script(
        "var s = document.querySelector('select[data-key=\"0\"]'); s.value = '__proto__';"
        "s.dispatchEvent(new Event('change'))"
    )
    assert browser.text(browser.find("#count")) == f"2 of {len(records)} examples"
    browser.click(browser.find(".tabs button[data-tab=features]"))
    browser.script(
        "var s = document.getElementById('groupby'); s.value = '0';"
        "s.dispatchEvent(new Event('change'))"
    )
    drawn = browser.script(
        "return [...document.querySelectorAll('#agg .group')].map(g => g.dataset.group)"
    )
    assert drawn == ["__proto__"]


def test_a_failure_with_an_empty_message_shows_as_failed(browser, tmp_path):
    failed = {"id": "f", "index": 1, "prompt": "p", "target": None, "meta": {}, "error": ""}
    records = [synthetic(["a"], [1.0]), failed]
    page = write_explorer(write_results(tmp_path / "r.jsonl", records), tmp_path / "e.html")
    open_page(browser, page)
    browser.click(browser.find_all("#rows tr")[1])
    assert browser.text(browser.find("#detail h2")) == "f"
    assert browser.text(browser.find("#detail .err")).startswith("This prompt failed: ")
    assert browser.find_all("#rows td.err")
    # The page itself counts a record with an "error" key as failed, whatever its message.
    assert browser.script("return window.llmattrAggregate(-1, 1)[0].size") == 1


def test_non_finite_modality_shares_show_as_nan(browser, tmp_path):
    rec = synthetic(["p0", "w"], [float("nan"), 1.0], info={"modalities": ["image", "text"]})
    open_page(browser, explore([rec], tmp_path / "e.html"))
    assert browser.text(browser.find("#detail .shares")) == (
        "share of |attribution|: image nan · text nan"
    )
