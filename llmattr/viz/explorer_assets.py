"""The explorer page's script (inline: the page's policy runs this script only, matched by
its hash).

The script reads the page's JSON data block once, then builds everything with
``createElement`` and ``textContent`` (never ``innerHTML``), so no prompt, label or metadata
value is ever parsed as markup. The examples table shows one page of rows at a time; filtering
runs over lowercase texts prepared once at load, and the feature averages are recomputed over
the rows the filter keeps when their tab is opened. Timings (``performance.now()``) are left
on ``<html>``: ``data-load-ms`` (from navigation start to the first rendered table),
``data-init-ms`` (the script's own work) and ``data-filter-ms`` (the last filter and redraw).
"""

from __future__ import annotations

__all__ = ["EXPLORER_SCRIPT", "ROWS_PER_PAGE"]

#: Table rows drawn at a time.
ROWS_PER_PAGE = 100

EXPLORER_SCRIPT = """(function () {
  "use strict";
  var t0 = performance.now(), doc = document, root = doc.documentElement;
  var D = JSON.parse(doc.getElementById("llmattr-explorer-data").textContent);
  var EX = D.examples, VOCAB = D.vocab, KEYS = D.keys, LEVELS = 10, PAGE = __PAGE__;
  var COMPACT = 41, MAX_GROUPS = 12, TOP = 25;
  function $(id) { return doc.getElementById(id); }
  function el(tag, cls, text) {
    var e = doc.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function real(v) {
    return v === "inf" ? Infinity : v === "-inf" ? -Infinity : v === null ? NaN : v;
  }
  function num(v) {
    v = real(v);
    if (isNaN(v)) return "nan";
    if (!isFinite(v)) return (v < 0 ? "-" : "+") + "inf";
    var a = Math.abs(v), s = (a >= 1e-3 && a < 1e4) || a === 0 ? a.toFixed(4) : a.toExponential(3);
    s = s.replace(/e([+-])(\\d)$/, function (m, sign, digit) { return "e" + sign + "0" + digit; });
    return (v < 0 ? "-" : "+") + s;
  }
  function cell(v, lim) {
    v = real(v);
    if (isNaN(v)) return "nan";
    return (v < 0 ? "-" : "+") + (lim >= 0.01 && lim < 1000 ? Math.abs(v).toFixed(2)
      : Math.abs(v).toExponential(1));
  }
  function short(v) { return String(Number(v.toPrecision(3))); }
  function step(v, lim) {
    v = real(v);
    if (v === Infinity) return 2 * LEVELS;
    if (v === -Infinity) return 0;
    if (isNaN(v) || !(lim > 0)) return LEVELS;
    return LEVELS + Math.max(-LEVELS, Math.min(LEVELS, Math.round(v / lim * LEVELS)));
  }
  function group(v) {
    return v === null || v === undefined ? "(none)" : String(v);
  }
  function legend(lim, note) {
    var box = el("div", "legend"), bar = el("span", "bar");
    box.appendChild(el("span", null, short(-lim) + " lowers the target"));
    for (var s = 0; s <= 2 * LEVELS; s++) bar.appendChild(el("i", "q" + s));
    bar.title = "attribution";
    box.appendChild(bar);
    box.appendChild(el("span", null, "raises the target +" + short(lim)));
    var n = el("span", "note", note); box.appendChild(n);
    return box;
  }
  // ---- the table -------------------------------------------------------------------------
  EX.forEach(function (e, k) {
    e.k = k;
    e.hay = (e.id + "\\n" + e.prompt + "\\n" + e.target).toLowerCase();
    e.failed = "error" in e;
    e.topText = e.failed ? "error: " + e.error : (e.top || []).map(function (t) {
      return t[0] + " " + num(t[1]);
    }).join(", ");
  });
  var COLS = [
    {name: "#", get: function (e) { return e.i; }, num: true},
    {name: "id", get: function (e) { return e.id; }}
  ];
  KEYS.forEach(function (key, j) {
    var numeric = EX.every(function (e) {
      return e.meta[j] === null || typeof e.meta[j] === "number";
    });
    COLS.push({name: key, get: function (e) { return e.meta[j]; }, num: numeric});
  });
  COLS.push({name: "target", get: function (e) { return e.target; }});
  COLS.push({name: "p(target)", get: function (e) { return e.p === undefined ? null : e.p; },
    num: true, show: function (v) { return v === null ? "" : v.toFixed(4); }});
  COLS.push({name: "top features", get: function (e) { return e.topText; }});
  COLS.push({name: "prompt", get: function (e) { return e.prompt; }});
  var state = {rows: EX.slice(), col: 0, dir: 1, page: 0, sel: -1, query: "",
    meta: Object.create(null)};
  var tbody = $("rows"), head = $("head");
  COLS.forEach(function (c, j) {
    var th = el("th", null, c.name);
    th.setAttribute("data-col", j);
    head.appendChild(th);
  });
  function compare(a, b) {
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;  // missing values last, either direction
    if (b === null || b === undefined) return -1;
    var ta = typeof a, tb = typeof b;
    if (ta !== tb) return ta === "number" ? -1 : ta < tb ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function order() {
    var get = COLS[state.col].get, dir = state.dir;
    state.rows.sort(function (x, y) {
      var a = get(x), b = get(y), c;
      if (a === null || a === undefined || b === null || b === undefined) c = compare(a, b);
      else c = dir * compare(a, b);
      return c || x.k - y.k;
    });
    head.querySelectorAll("th").forEach(function (th, j) {
      th.className = j === state.col ? (state.dir > 0 ? "asc" : "desc") : "";
    });
  }
  function draw() {
    var n = state.rows.length, pages = Math.max(1, Math.ceil(n / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * PAGE, frag = doc.createDocumentFragment();
    state.rows.slice(start, start + PAGE).forEach(function (e) {
      var tr = el("tr");
      tr.setAttribute("data-k", e.k);
      if (e.k === state.sel) tr.className = "sel";
      COLS.forEach(function (c) {
        var v = c.get(e), td = el("td", c.num ? "num" : null);
        td.textContent = c.show ? c.show(v) : v === null || v === undefined ? "" : String(v);
        if (c.name === "top features" && e.failed) td.className = "err";
        td.title = td.textContent;
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    });
    tbody.textContent = "";
    tbody.appendChild(frag);
    $("count").textContent = n + " of " + EX.length + " examples";
    $("page").textContent = n ? "rows " + (start + 1) + "\\u2013" + Math.min(n, start + PAGE) +
      " of " + n + " (page " + (state.page + 1) + " of " + pages + ")" : "no example matches";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }
  function filter() {
    var t = performance.now(), terms = state.query.toLowerCase().split(/\\s+/).filter(Boolean);
    var wanted = Object.keys(state.meta);
    state.rows = EX.filter(function (e) {
      for (var i = 0; i < terms.length; i++) if (e.hay.indexOf(terms[i]) < 0) return false;
      for (var j = 0; j < wanted.length; j++) {
        if (group(e.meta[+wanted[j]]) !== state.meta[wanted[j]]) return false;
      }
      return true;
    });
    order(); state.page = 0; draw(); aggDirty = true;
    if (!$("features").hidden) drawAgg();
    root.setAttribute("data-filter-ms", (performance.now() - t).toFixed(2));
  }
  $("q").addEventListener("input", function () { state.query = this.value; filter(); });
  KEYS.forEach(function (key, j) {  // a choice per metadata key with few distinct values
    var seen = new Set();  // never a plain object: a value may be "__proto__" or "constructor"
    EX.forEach(function (e) { seen.add(group(e.meta[j])); });
    var values = Array.from(seen).sort();
    if (values.length < 2 || values.length > 50) return;
    var label = el("label", null, key + " "), sel = el("select");
    sel.setAttribute("data-key", j);
    sel.appendChild(el("option", null, "(any)")).value = "\\u0000any";
    values.forEach(function (v) { sel.appendChild(el("option", null, v)).value = v; });
    sel.addEventListener("change", function () {
      if (this.value === "\\u0000any") delete state.meta[j]; else state.meta[j] = this.value;
      filter();
    });
    label.appendChild(sel);
    $("filters").appendChild(label);
    var opt = el("option", null, key); opt.value = j; $("groupby").appendChild(opt);
  });
  head.addEventListener("click", function (ev) {
    var th = ev.target.closest("th");
    if (!th) return;
    var j = +th.getAttribute("data-col");
    state.dir = state.col === j ? -state.dir : COLS[j].num ? -1 : 1;
    state.col = j; order(); draw();
  });
  tbody.addEventListener("click", function (ev) {
    var tr = ev.target.closest("tr");
    if (tr) select(+tr.getAttribute("data-k"));
  });
  $("prev").addEventListener("click", function () { state.page--; draw(); });
  $("next").addEventListener("click", function () { state.page++; draw(); });
  doc.addEventListener("keydown", function (ev) {
    var key = ev.key, from = ev.target;
    if ((from.closest && from.closest("input,select")) || (key !== "ArrowDown" &&
      key !== "ArrowUp")) return;
    var at = -1;
    for (var i = 0; i < state.rows.length; i++) if (state.rows[i].k === state.sel) at = i;
    var to = Math.max(0, Math.min(state.rows.length - 1, at + (ev.key === "ArrowDown" ? 1 : -1)));
    if (!state.rows.length) return;
    ev.preventDefault();
    state.page = Math.floor(to / PAGE);
    select(state.rows[to].k);
    tbody.querySelector("tr.sel").scrollIntoView({block: "nearest"});
  });
  // ---- one example ---------------------------------------------------------------------------
  function select(k) {
    state.sel = k; draw(); show(EX[k]);
  }
  function show(e) {
    var box = $("detail"); box.textContent = "";
    box.setAttribute("data-k", e.k);
    box.appendChild(el("h2", null, e.id));
    var line = "example " + e.i + (e.method ? " \\u00b7 " + e.method : "");
    if (e.p !== undefined && e.p !== null) line += " \\u00b7 p(target) = " + e.p.toFixed(4);
    box.appendChild(el("p", "meta", line));
    var dl = el("dl", "info");
    dl.appendChild(el("dt", null, "target"));
    dl.appendChild(el("dd", null, JSON.stringify(e.target)));
    KEYS.forEach(function (key, j) {
      dl.appendChild(el("dt", null, key)); dl.appendChild(el("dd", null, group(e.meta[j])));
    });
    box.appendChild(dl);
    if (e.failed) {
      box.appendChild(el("h3", null, "Prompt"));
      box.appendChild(el("div", "prompt", e.prompt));
      box.appendChild(el("p", "err", "This prompt failed: " + e.error));
      return;
    }
    if (e.shares) {
      var parts = Object.keys(e.shares).map(function (m) {
        var v = e.shares[m];
        return m + " " + (typeof v === "number" ? Math.round(100 * v) + "%" : "nan");
      });
      box.appendChild(el("p", "shares", "share of |attribution|: " + parts.join(" \\u00b7 ")));
    }
    if (e.image) {
      box.appendChild(el("h3", null, "Image"));
      box.appendChild(legend(e.sl, "image: attribution to the whole target (strongest pixel " +
        "scaled to the strongest colour)"));
      var pics = el("div", "pics");
      [["overlay", "coloured by its regions' attributions"], ["image", "the image"]].forEach(
        function (p) {
          if (!e.image[p[0]]) return;
          var fig = el("figure"), img = el("img");
          img.src = e.image[p[0]]; img.alt = p[1];
          fig.appendChild(img); fig.appendChild(el("figcaption", null, p[1]));
          pics.appendChild(fig);
        });
      box.appendChild(pics);
    }
    var names = e.tok.map(function (t) { return VOCAB[t]; });
    box.appendChild(el("h3", null, "Prompt"));
    var cap = legend(e.sl, "colour: attribution to the whole target");
    box.appendChild(cap);
    var prompt = el("div", "prompt"), chips = [];
    names.forEach(function (n, j) {
      var c = el("span", null, n); chips.push(c);
      prompt.appendChild(c);
      if (j < names.length - 1) prompt.appendChild(doc.createTextNode(" "));
    });
    function paint(vals, lim) {
      chips.forEach(function (c, j) {
        c.className = "tok q" + step(vals[j], lim); c.title = names[j] + ": " + num(vals[j]);
      });
    }
    paint(e.seq, e.sl);
    box.appendChild(prompt);
    if (!e.rows) {
      if (e.omitted) box.appendChild(el("p", "note", "The token \\u00d7 target heatmap of this " +
        "example is not embedded in the page (too many values)."));
      return;
    }
    box.appendChild(el("h3", null, "Each target token"));
    box.appendChild(legend(e.tl, "click a target token to colour the prompt by it"));
    var wrap = el("div", "heat");
    var table = el("table", "hm" + (names.length >= COMPACT ? " compact" : ""));
    var thead = el("thead"), hr = el("tr"), tb = el("tbody");
    hr.appendChild(el("th", "row", "target")); hr.appendChild(el("th", "prob", "p"));
    names.forEach(function (n) {
      var th = el("th", "col"); th.title = n;
      th.appendChild(el("span", null, n)); hr.appendChild(th);
    });
    thead.appendChild(hr); table.appendChild(thead);
    e.rows.forEach(function (row, t) {
      var tr = el("tr"), out = e.out[t], p = e.probs ? real(e.probs[t]) : NaN;
      var p_text = isFinite(p) ? p.toFixed(4) : "nan";
      var th = el("th", "row", out); th.title = "p=" + p_text; tr.appendChild(th);
      tr.appendChild(el("th", "prob", p_text.slice(0, 5)));
      row.forEach(function (v, j) {
        var td = el("td", "q" + step(v, e.tl), names.length >= COMPACT ? "" : cell(v, e.tl));
        td.title = JSON.stringify(out) + " \\u2190 " + JSON.stringify(names[j]) + ": " + num(v);
        tr.appendChild(td);
      });
      tb.appendChild(tr);
    });
    table.appendChild(tb); wrap.appendChild(table); box.appendChild(wrap);
    var chosen = -1;
    tb.addEventListener("click", function (ev) {
      var th = ev.target.closest("th.row");
      if (!th) return;
      var t = th.parentNode.sectionRowIndex;
      tb.querySelectorAll("th.row.sel").forEach(function (h) { h.classList.remove("sel"); });
      chosen = chosen === t ? -1 : t;
      if (chosen >= 0) { th.classList.add("sel"); paint(e.rows[t], e.tl); }
      else paint(e.seq, e.sl);
      cap.querySelector(".note").textContent = chosen < 0 ? "colour: attribution to the " +
        "whole target" : "colour: attribution to target token " + (t + 1) + " " +
        JSON.stringify(e.out[t]);
    });
  }
  // ---- feature averages ---------------------------------------------------------------------
  var aggDirty = true, aggSort = 0;  // 0: mean |a|, 1: mean a, 2: count, 3: examples
  var SLOT = new Int32Array(VOCAB.length);  // scratch: a feature's place in its group, + 1
  function aggregate(list, j) {
    // Sparse sums per group: the features that occur in it, in parallel arrays (groups kept in a
    // Map, as their names are data). SLOT is shared and reset after each group.
    var groups = new Map();
    list.forEach(function (e) {
      if (e.failed) return;
      var g = j < 0 ? "all" : group(e.meta[j]), b = groups.get(g);
      if (!b) groups.set(g, b = []);
      b.push(e);
    });
    return Array.from(groups, function (pair) {
      var rows = pair[1], feat = [], n = [], x = [], sum = [], abs = [], last = [];
      for (var r = 0; r < rows.length; r++) {
        var tok = rows[r].tok, seq = rows[r].seq;
        for (var i = 0; i < tok.length; i++) {
          var v = seq[i], t = tok[i], s = SLOT[t] - 1;
          if (typeof v !== "number") continue;  // NaN (null) and infinities ("inf") left out
          if (s < 0) {
            s = feat.length; SLOT[t] = s + 1;
            feat.push(t); n.push(0); x.push(0); sum.push(0); abs.push(0); last.push(-1);
          }
          n[s]++; sum[s] += v; abs[s] += v < 0 ? -v : v;
          if (last[s] !== r) { x[s]++; last[s] = r; }
        }
      }
      for (var q = 0; q < feat.length; q++) SLOT[feat[q]] = 0;
      return {group: pair[0], size: rows.length, feat: feat, n: n, x: x, sum: sum, abs: abs};
    });
  }
  function stat(g, q) {
    return {feature: VOCAB[g.feat[q]], count: g.n[q], examples: g.x[q],
      mean: g.sum[q] / g.n[q], mean_abs: g.abs[q] / g.n[q]};
  }
  function allStats(g, minCount) {
    var rows = [];
    for (var q = 0; q < g.feat.length; q++) if (g.n[q] >= minCount) rows.push(stat(g, q));
    return rows;
  }
  function topStats(g, minCount, k) {
    // The k best features by the chosen column (ties by label), without sorting them all.
    var key = [g.abs, g.sum, g.n, g.x][aggSort], mean = aggSort < 2, best = [];
    function value(q) { return mean ? key[q] / g.n[q] : key[q]; }
    function before(p, q) {  // p ranks above q
      var a = value(p), b = value(q);
      if (a !== b) return a > b;
      return VOCAB[g.feat[p]] < VOCAB[g.feat[q]];
    }
    for (var q = 0; q < g.feat.length; q++) {
      if (g.n[q] < minCount || (best.length === k && !before(q, best[k - 1]))) continue;
      var at = best.length === k ? k - 1 : best.length;
      while (at > 0 && before(q, best[at - 1])) { best[at] = best[at - 1]; at--; }
      best[at] = q;
    }
    return best.map(function (q) { return stat(g, q); });
  }
  function drawAgg() {
    if (!aggDirty) return;
    aggDirty = false;
    var j = +$("groupby").value, minCount = Math.max(1, +$("mincount").value || 1);
    var groups = aggregate(state.rows, j), box = $("agg");
    groups.sort(function (a, b) { return b.size - a.size || compare(a.group, b.group); });
    box.textContent = "";
    groups.slice(0, MAX_GROUPS).forEach(function (g) {
      var top = topStats(g, minCount, TOP), part = el("div", "group");
      part.setAttribute("data-group", g.group);
      part.appendChild(el("h3", null, (j < 0 ? "all examples" : KEYS[j] + " = " + g.group) +
        " \\u00b7 " + g.size + " example" + (g.size === 1 ? "" : "s")));
      var lim = 0, big = 0;
      top.forEach(function (f) {
        lim = Math.max(lim, Math.abs(f.mean)); big = Math.max(big, f.mean_abs);
      });
      var table = el("table", "ag"), hr = el("tr");
      ["feature", "mean |attribution|", "", "mean attribution", "count", "examples"].forEach(
        function (name, c) {
          var th = el("th", null, name);
          var s = [-1, 0, -1, 1, 2, 3][c];
          if (s >= 0) th.setAttribute("data-sort", s);
          if (s >= 0 && s === aggSort) th.textContent += " \\u25BC";
          hr.appendChild(th);
        });
      var thead = el("thead"); thead.appendChild(hr); table.appendChild(thead);
      var tb = el("tbody");
      top.forEach(function (f) {
        var tr = el("tr");
        tr.appendChild(el("td", "f", f.feature)).title = f.feature;
        tr.appendChild(el("td", "num", num(f.mean_abs).slice(1)));
        var bc = el("td", "barcell"), bar = el("i", "bar");
        bar.style.width = (big > 0 ? 100 * f.mean_abs / big : 0) + "%";
        bc.appendChild(bar); tr.appendChild(bc);
        tr.appendChild(el("td", "num q" + step(f.mean, lim), num(f.mean)));
        tr.appendChild(el("td", "num", f.count));
        tr.appendChild(el("td", "num", f.examples));
        tb.appendChild(tr);
      });
      table.appendChild(tb); part.appendChild(table);
      if (!top.length) part.appendChild(el("p", "note", "no feature occurs often enough"));
      box.appendChild(part);
    });
    if (groups.length > MAX_GROUPS) {
      box.appendChild(el("p", "note", (groups.length - MAX_GROUPS) + " smaller groups not shown"));
    }
    $("aggnote").textContent = "over the " + state.rows.length + " examples the filter keeps; " +
      "seq attribution (to the whole target) of each feature label; top " + TOP + " per group";
  }
  $("agg").addEventListener("click", function (ev) {
    var th = ev.target.closest("th[data-sort]");
    if (!th) return;
    aggSort = +th.getAttribute("data-sort"); aggDirty = true; drawAgg();
  });
  $("groupby").addEventListener("change", function () { aggDirty = true; drawAgg(); });
  $("mincount").addEventListener("input", function () { aggDirty = true; drawAgg(); });
  doc.querySelectorAll(".tabs button").forEach(function (b) {
    b.addEventListener("click", function () {
      doc.querySelectorAll(".tabs button").forEach(function (o) {
        o.classList.toggle("on", o === b);
        $(o.getAttribute("data-tab")).hidden = o !== b;
      });
      if (b.getAttribute("data-tab") === "features") drawAgg();
    });
  });
  window.llmattrAggregate = function (j, minCount) {  // every feature, for tests and the console
    return aggregate(EX, j).map(function (g) {
      return {group: g.group, size: g.size, features: allStats(g, minCount || 1)};
    });
  };
  order(); draw();
  if (EX.length) select(state.rows[0].k);
  root.setAttribute("data-init-ms", (performance.now() - t0).toFixed(2));
  root.setAttribute("data-load-ms", performance.now().toFixed(2));
  root.setAttribute("data-llmattr-explorer", "ready");
})();""".replace("__PAGE__", str(ROWS_PER_PAGE))
