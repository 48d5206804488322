"""Self-contained HTML pages that work offline: one local plotly.js under the results root,
sortable tables, a run's header; ``structbench.publish`` decides what goes on each page."""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs, get_plotlyjs_version

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
.unreliable{background:#fdecea;border:2px solid #c62828;color:#7f0000;padding:.6em 1em;margin:1em 0}
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
    html: str = ""  # trusted markup placed after the tables (links in the index)


def table_html(frame: pd.DataFrame, metrics: dict[str, Any] | None = None, escape: bool = True) -> str:
    return display_frame(frame, metrics).to_html(index=False, classes="data", border=0, escape=escape)


def render_page(title: str, header_html: str, sections: list[Section], plotly_src: str | None,
                metrics: dict[str, Any] | None = None) -> str:
    """One page; ``plotly_src`` is the relative path of the local plotly.js (None: no plots)."""
    script = f"<script src='{plotly_src}'></script>" if plotly_src else ""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style>{script}</head><body>",
             f"<h1>{html.escape(title)}</h1>{header_html}<pre id='js-errors' hidden></pre><script>{SORT_JS}</script>"]
    for n, section in enumerate(sections):
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p class='note'>{html.escape(section.text)}</p>")
        if section.figures:
            # auto-fill keeps the grid's columns fixed while the page is parsed, so each
            # plot is sized for its own column when its script runs
            parts.append("<div class='figs'>" if len(section.figures) > 1 else "<div>")
            for k, fig in enumerate(section.figures):
                parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{n}-{k}",
                                         config={"displaylogo": False, "responsive": True}))
            parts.append("</div>")
        for table in section.tables:
            parts.append(table_html(table, metrics))
        parts.append(section.html)
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


def run_header(run: RunData) -> str:
    m = run.meta
    env, git, cli = m.get("env", {}), m.get("git", {}), m.get("cli", {})
    commit = (git.get("commit") or "no git")[:10] + (" (dirty)" if git.get("dirty") else "")
    cells = {
        "suite": f"{m['suite']['name']} v{m['suite']['version']}", "status": shown_status(run),
        "started": m.get("started"), "finished": m.get("finished"), "device": env.get("device_name"),
        "dtype": cli.get("dtype"), "threads": env.get("threads"), "quick": cli.get("quick"), "commit": commit,
        "torch": env.get("torch"), "python": env.get("python"), "cases": f"{m.get('n_done')}/{m.get('n_cases')}",
    }
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in cells.items())
    return (unreliable_banner(run) + f"<table class='meta'>{rows}</table>"
            f"<p class='meta'>{html.escape(m['suite'].get('description', ''))}</p>")


def unreliable_banner(run: RunData) -> str:
    """A red box above everything when the run judged its own numbers untrustworthy."""
    reliability = run.meta.get("reliability") or {}
    if not reliability.get("unreliable"):
        return ""
    items = "".join(f"<li>{html.escape(r)}</li>" for r in reliability.get("reasons", []))
    return ("<div class='unreliable'><b>Unreliable run: these numbers are not measurements of the kernels "
            f"alone.</b><ul>{items}</ul>Re-run on an idle machine (or with <code>--retry-noisy</code>); "
            "<code>compare</code> refuses this run unless <code>--force</code>.</div>")
