"""The results page's style sheet, script and table frame, inlined into the page so it is one self-contained file.

The script only enhances: every table is complete in the HTML, and sorting is the one thing it
adds (a button in each sortable header). A page opened with script disabled, printed, or read
by an HTML parser shows the same numbers.
"""

from __future__ import annotations

from typing import Sequence

CSS = """
:root { --fg: #1b1f24; --dim: #5c6670; --line: #d5dbe1; --head: #f3f5f7; --best: #0b6e2f; --tie: #3c6e91; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0 auto;
       max-width: 1200px; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; } h2 { margin-top: 2.5rem; border-bottom: 2px solid var(--line); }
h3 { margin-top: 1.8rem; } h4 { margin: 1.2rem 0 .4rem; }
p.lede, .note, caption { color: var(--dim); }
nav ul { padding-left: 1.2rem; } nav li { margin: .15rem 0; }
.scroll { overflow-x: auto; margin: .5rem 0 1rem; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; padding: .3rem 0; font-size: .9rem; }
th, td { border: 1px solid var(--line); padding: .3rem .55rem; vertical-align: top; }
thead th { background: var(--head); text-align: left; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
th.row { text-align: left; font-weight: 600; white-space: nowrap; }
tbody.refs { color: var(--dim); background: #fafbfc; }
.ci { color: var(--dim); font-size: .82em; }
.sub { color: var(--dim); font-weight: normal; font-size: .82em; }
.mark.best { color: var(--best); } .mark.tie { color: var(--tie); }
th button { font: inherit; font-weight: 600; color: inherit; background: none; border: 0; padding: 0;
            cursor: pointer; text-align: inherit; }
th button::after { content: " \\2195"; color: var(--dim); font-weight: normal; }
th[aria-sort="ascending"] button::after { content: " \\2191"; }
th[aria-sort="descending"] button::after { content: " \\2193"; }
.bar { display: flex; width: 220px; height: .9rem; background: #eef1f4; }
.bar .alg { background: #4a7fb0; } .bar .val { background: #e29a3b; }
.key { display: inline-block; width: .8rem; height: .8rem; vertical-align: middle; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code { font-size: .9em; }
"""

JS = """
(function () {
  "use strict";
  function key(cell) {
    if (!cell) { return null; }
    var raw = cell.getAttribute("data-value");
    if (raw !== null && raw !== "") { return parseFloat(raw); }
    return cell.textContent.trim().toLowerCase();
  }
  function compare(a, b) {
    if (a === null || a !== a) { return 1; }
    if (b === null || b !== b) { return -1; }
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    return String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0;
  }
  function sortBy(table, th, column) {
    var body = table.querySelector("tbody.rows");
    if (!body) { return; }
    var descending = th.getAttribute("aria-sort") !== "descending";
    table.querySelectorAll("thead th").forEach(function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var a = key(r1.cells[column]), b = key(r2.cells[column]);
      if (a === null || a !== a) { return 1; }
      if (b === null || b !== b) { return -1; }
      return descending ? compare(b, a) : compare(a, b);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var head = table.tHead && table.tHead.rows[table.tHead.rows.length - 1];
    if (!head) { return; }
    Array.prototype.forEach.call(head.cells, function (th, column) {
      var button = document.createElement("button");
      button.type = "button";
      while (th.firstChild) { button.appendChild(th.firstChild); }
      th.appendChild(button);
      button.addEventListener("click", function () { sortBy(table, th, column); });
    });
  });
})();
"""


def table(caption: str, headers: Sequence[str], refs: Sequence[str], rows: Sequence[str], *, sortable: bool = True) -> str:
    """A table whose ``rows`` (methods) sort and whose ``refs`` (base, expert) stay above them; headers are HTML."""
    head = "".join(f'<th scope="col">{h}</th>' for h in headers)
    body = (f'<tbody class="refs">{"".join(refs)}</tbody>' if refs else "") + f'<tbody class="rows">{"".join(rows)}</tbody>'
    cls = ' class="sortable"' if sortable else ""
    return (f'<div class="scroll"><table{cls}><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
            f"{body}</table></div>")
