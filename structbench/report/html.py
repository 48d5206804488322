"""Self-contained HTML pages that work offline: one local plotly.js under the results root,
sortable tables, a run's header; ``structbench.publish`` decides what goes on each page."""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from structbench.report.plots import sorted_families
from structbench.report.tables import display_frame
from structbench.results import RunData, shown_status

# Versioned: a report keeps loading the plotly.js its figures were written for after an upgrade.
PLOTLY_FILE = f"plotly-{get_plotlyjs_version()}.min.js"

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} .meta{color:#555;font-size:.9em} .meta td{padding:0 1.2em 0 0}
table.data{border-collapse:collapse;font-size:.85em;margin:1em 0;display:block;overflow-x:auto}
table.data th,table.data td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
table.data th{background:#f4f4f8;cursor:pointer;position:sticky;top:0}
table.data th:hover{background:#e6e6f0} .note{color:#444;max-width:75em}
.unreliable,.partial,.missing{background:#fdecea;border:2px solid #c62828;color:#7f0000;padding:.6em 1em;margin:1em 0}
.subtitle{font-size:1.05em;color:#333;max-width:75em;margin-top:0} .nav{margin:0 0 .5em;font-size:.9em}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:.5em 1em} .figs>div{min-width:0}
"""

# Click a header to sort by it; numbers compare numerically, the rest as text.
SORT_JS = """
window.__errors=[];window.addEventListener('error',e=>{window.__errors.push(String(e.message));
document.getElementById('js-errors').textContent=window.__errors.join('\\n');});
document.addEventListener('click',e=>{const th=e.target.closest('table.data th');if(!th)return;
const table=th.closest('table'),body=table.tBodies[0],i=[...th.parentNode.children].indexOf(th);
const asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
const key=r=>{const t=r.children[i].textContent.trim(),n=parseFloat(t);return isNaN(n)||!/^[-+0-9.]/.test(t)?t:n;};
[...body.rows].sort((a,b)=>{const x=key(a),y=key(b);const c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
return asc?c:-c;}).forEach(r=>body.appendChild(r));});
"""


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)


@dataclass(frozen=True)
class Link:
    """A table cell that links: ``href`` is a relative address already percent-encoded."""

    text: str
    href: str


def escape(value: Any) -> str:
    """Any value as HTML text: whatever a stored run holds is shown, never interpreted."""
    return html.escape(str(value))


def script_json(value: Any) -> str:
    """JSON for inside a ``<script>``: no ``<``, ``>`` or ``&`` left in it, so no string it
    holds can close the script or open a tag."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _cell(value: Any) -> str:
    if isinstance(value, Link):
        return f"<a href='{escape(value.href)}'>{escape(value.text)}</a>"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return escape(value)


def table_html(frame: pd.DataFrame, metrics: dict[str, Any] | None = None) -> str:
    """A sortable table; every header and cell is text, a ``Link`` cell a link."""
    shown = display_frame(frame, metrics)
    head = "".join(f"<th>{escape(c)}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                   for row in shown.itertuples(index=False, name=None))
    return f"<table class='data'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plain_text(value: Any) -> Any:
    """Every string of a figure escaped: plotly.js draws titles, names, ticks and hover text
    as its own small HTML (tags interpreted, entities decoded), so escaped text is drawn
    exactly as stored, whatever a run's names hold."""
    if isinstance(value, str):
        return html.escape(value, quote=False)
    if isinstance(value, list):
        return [_plain_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_text(v) for k, v in value.items()}
    return value


CLICK_JS = ("gd=>gd.on('plotly_click',e=>{const h=e.points[0].customdata;"
            "if(typeof h==='string'&&/^[^:]*[.]html$/.test(h))window.location.href=h;})")
"""A click on a point whose ``customdata`` is a relative ``.html`` address opens it (no
scheme: a stored string can never send the reader off-site or run a ``javascript:`` URL)."""


def figure_html(fig: go.Figure, div_id: str) -> str:
    """The figure's div and the script that draws it once plotly.js is there (a page opened
    without it shows ``MISSING_PLOTLY``'s note instead of failing)."""
    spec = _plain_text(json.loads(pio.to_json(fig, validate=False)))
    spec["config"] = {"displaylogo": False, "responsive": True}
    height = int(spec.get("layout", {}).get("height") or 450)
    return (f"<div id='{div_id}' class='plotly-graph-div' style='height:{height}px;width:100%'></div>"
            f"<script>if(window.Plotly)Plotly.newPlot('{div_id}',{script_json(spec)}).then({CLICK_JS});</script>")


def plotly_missing_note(plotly_src: str) -> str:
    """Hidden unless plotly.js failed to load (a report opened or mailed without its results
    folder): says which file the charts need and where to get it."""
    note = (f"The charts of this page need plotly.js, loaded from {plotly_src} (the file {PLOTLY_FILE} at the top "
            f"of the results folder this report belongs to), which is not there. Open the report inside its "
            f"results folder, or put {PLOTLY_FILE} there: 'python bench.py report' writes it, and it is also at "
            f"https://cdn.plot.ly/{PLOTLY_FILE}. The tables below are complete without it.")
    return (f"<div id='plotly-missing' class='missing' hidden>{escape(note)}</div>"
            "<script>if(typeof Plotly==='undefined')document.getElementById('plotly-missing').hidden=false;</script>")


def render_page(title: str, header_html: str, sections: list[Section], plotly_src: str | None,
                metrics: dict[str, Any] | None = None, index_href: str | None = None) -> str:
    """One page; ``plotly_src`` is the relative path of the local plotly.js (None: no plots),
    ``index_href`` that of the results index the page links back to."""
    script = f"<script src='{escape(plotly_src)}'></script>" if plotly_src else ""
    back = f"<p class='nav'><a href='{escape(index_href)}'>&larr; all runs</a></p>" if index_href else ""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
             f"<style>{STYLE}</style>{script}</head><body>{back}",
             f"<h1>{escape(title)}</h1>{header_html}<pre id='js-errors' hidden></pre><script>{SORT_JS}</script>"]
    if plotly_src:
        parts.append(plotly_missing_note(plotly_src))
    for n, section in enumerate(sections):
        parts.append(f"<h2>{escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p class='note'>{escape(section.text)}</p>")
        if section.figures:
            # auto-fill keeps the grid's columns fixed while the page is parsed, so each
            # plot is sized for its own column when its script runs
            parts.append("<div class='figs'>" if len(section.figures) > 1 else "<div>")
            parts.extend(figure_html(fig, f"fig-{n}-{k}") for k, fig in enumerate(section.figures))
            parts.append("</div>")
        parts.extend(table_html(table, metrics) for table in section.tables)
    parts.append("</body></html>")
    return "".join(parts)


def ensure_plotly(root: Path) -> None:
    """The local plotly.js every report loads: rewritten unless the file there is complete
    (same size as the library's), and written to a temporary name first, so a full disk or a
    kill never leaves a truncated copy that blanks every later report's plots."""
    path = root / PLOTLY_FILE
    script = get_plotlyjs().encode()
    if path.is_file() and path.stat().st_size == len(script):
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(script)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def report_href(run: RunData, page_dir: Path) -> str:
    """The percent-encoded relative address of ``run``'s report from a page in ``page_dir``."""
    return quote(Path(os.path.relpath(run.run_dir / "report.html", page_dir)).as_posix())


def cases_done(run: RunData) -> int:
    """Cases the run has rows for: distinct case keys (a row without one counts alone)."""
    keys = [row.get("case_key") for row in run.rows]
    return len({k for k in keys if k is not None}) + sum(k is None for k in keys)


def families_run(run: RunData) -> list[str]:
    """The families the run's rows name, in the order every plot uses."""
    return sorted_families(str(row["family"]) for row in run.rows if row.get("family") is not None)


def reliability_text(run: RunData) -> str:
    """The run's verdict on its own numbers, in a word or a few."""
    reliability = run.meta.get("reliability")
    if not isinstance(reliability, dict):
        return "not assessed"
    if not reliability.get("unreliable"):
        return "reliable"
    count = len(reliability.get("reasons") or [])
    return f"unreliable ({count} reason{'s' if count != 1 else ''})"


def run_header(run: RunData, subtitle: str | None = None) -> str:
    """What the run is (``subtitle``, from its config; else the suite's stored description),
    whether its results are whole and trustworthy, and where and how it ran."""
    m = run.meta
    env, git, cli = m.get("env", {}), m.get("git", {}), m.get("cli", {})
    commit = (git.get("commit") or "no git")[:10] + (" (dirty)" if git.get("dirty") else "")
    cells = {
        "suite": f"{m['suite']['name']} v{m['suite']['version']}", "status": shown_status(run),
        "started": m.get("started"), "finished": m.get("finished"), "device": env.get("device_name"),
        "dtype": cli.get("dtype"), "threads": env.get("threads"), "quick": cli.get("quick"), "commit": commit,
        "torch": env.get("torch"), "python": env.get("python"), "cases": f"{cases_done(run)}/{m.get('n_cases')}",
        "families": ", ".join(families_run(run)), "reliability": reliability_text(run),
    }
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in cells.items())
    about = subtitle if subtitle is not None else m["suite"].get("description", "")
    return (f"<p class='subtitle'>{escape(about)}</p>" + partial_banner(run) + unreliable_banner(run)
            + f"<table class='meta'>{rows}</table>")


def partial_banner(run: RunData) -> str:
    """A box above everything when the run is not a finished whole: stopped, still running,
    failed, or with fewer cases than it planned (a merge with shards missing)."""
    status, planned, done = shown_status(run), run.meta.get("n_cases"), cases_done(run)
    missing = isinstance(planned, int) and done < planned
    if status == "complete" and not missing:
        return ""
    how = {"interrupted": "was interrupted", "crashed": "stopped without finishing (killed, or its machine went away)",
           "failed": "failed outside any case", "running": "is still running",
           "complete": "ended with cases missing"}.get(status, f"has status {status}")
    cases = f"{done} of {planned} cases have results" if isinstance(planned, int) else f"{done} cases have results"
    action = ("reload this page when it ends" if status == "running"
              else "'python bench.py --resume' on this run's folder runs the rest")
    return (f"<div class='partial'><b>Partial results: this run {escape(how)}.</b> {escape(cases)}; "
            f"the tables and charts below show only those. {escape(action.capitalize())}.</div>")


def unreliable_banner(run: RunData) -> str:
    """A red box above everything when the run judged its own numbers untrustworthy."""
    reliability = run.meta.get("reliability") or {}
    if not reliability.get("unreliable"):
        return ""
    items = "".join(f"<li>{escape(r)}</li>" for r in reliability.get("reasons") or [])
    return ("<div class='unreliable'><b>Unreliable run: by the suite's own checks, these numbers are not "
            f"measurements of what they claim alone.</b><ul>{items}</ul>Re-run on an idle machine; "
            "<code>compare</code> refuses this run unless <code>--force</code>.</div>")
