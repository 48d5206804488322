"""The pages a reader gets: every report says whether its run is whole, describes the run it
shows (not the suite's default), titles its axes in words with units, gives CR in percent,
flags noisy decode speeds, and links to and from the index (the browser checks are in
test_report_browser.py)."""
from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import plotly.graph_objects as go
import pytest

from structbench.publish import index, publish, publish_reference
from structbench.report.html import PLOTLY_FILE
from structbench.results import REFERENCE, load_run
from suites import SUITES, reports
from tests.stored_runs import approx_run, fake_run, llama_compress_case, train_case


def _subtitle(page: str) -> str:
    match = re.search(r"<p class='subtitle'>(.*?)</p>", page)
    assert match, "the page has no subtitle"
    return html.unescape(match.group(1))


def _hrefs(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r"<a href='([^']*)'", page)]


def _published(run_dir: Path) -> str:
    publish([run_dir])
    return (run_dir / "report.html").read_text()


@pytest.fixture(scope="module")
def llama_quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --quick llama-compress run (CR 50 % only, nothing re-trained), published."""
    run_dir = fake_run(tmp_path_factory.mktemp("llama") / "results", "llama-compress", llama_compress_case)
    _published(run_dir)
    return run_dir


def test_an_interrupted_run_says_it_is_partial(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "results", "llama-compress", llama_compress_case, stop_after=3)
    assert load_run(run_dir).meta["status"] == "interrupted"
    page = _published(run_dir)
    banner = re.search(r"<div class='partial'>(.*?)</div>", page)
    assert banner and "interrupted" in banner.group(1) and "3 of 17 cases" in banner.group(1)
    assert page.index("class='partial'") < page.index("<h2>")


def test_a_run_with_cases_missing_says_so_whatever_its_status(tmp_path: Path) -> None:
    """A run stored as complete whose rows cover fewer cases than it planned (rows lost, a
    merge of some shards) is partial too; a whole run has no banner."""
    run_dir = fake_run(tmp_path / "results", "train-lm", train_case)
    assert "class='partial'" not in _published(run_dir)
    lines = (run_dir / "rows.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "rows.jsonl").write_text("".join(lines[:-2]))
    page = _published(run_dir)
    assert load_run(run_dir).meta["status"] == "complete" and "class='partial'" in page
    assert f"{len(lines) - 2} of {len(lines)} cases" in html.unescape(page)


def test_the_subtitle_describes_the_run_not_the_default_config(llama_quick: Path, tmp_path: Path) -> None:
    quick = _subtitle((llama_quick / "report.html").read_text())
    assert "CR 50 %" in quick and "10" not in quick and "20 %" not in quick and "re-trained" not in quick
    assert "--quick" in quick
    full = fake_run(tmp_path / "results", "llama-compress", llama_compress_case, quick=False, families=["lowrank"])
    whole = _subtitle(_published(full))
    assert "CR 10, 20 and 50 %" in whole and "re-trained at CR 20 and 50 %" in whole and "--quick" not in whole
    assert "10/20/50" not in SUITES.get("llama-compress").description  # --list names no fixed grid either


def _figures(run_dir: Path) -> list[go.Figure]:
    run = load_run(run_dir)
    return [fig for section in reports()[run.suite](run) for fig in section.figures]


def _axis_titles(fig: go.Figure) -> dict[str, str]:
    """The title of each axis a line or scatter trace is drawn on (heat maps label their
    cells with names and need none)."""
    titles = {}
    for trace in fig.data:
        if trace.type != "scatter":
            continue
        for axis in ("xaxis", "yaxis"):
            ref = getattr(trace, axis) or axis[0]
            name = ref.replace("x", "xaxis").replace("y", "yaxis")
            titles[name] = fig.layout[name].title.text or ""
    return titles


@pytest.fixture(scope="module")
def every_suite_run(kernels_run: tuple[Path, Path], llama_quick: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("suites") / "results"
    return [kernels_run[1], approx_run(out), llama_quick, fake_run(out, "train-lm", train_case)]


def test_axis_titles_are_words_not_column_names(every_suite_run: list[Path]) -> None:
    for run_dir in every_suite_run:
        columns = set(load_run(run_dir).frame().columns)
        for fig in _figures(run_dir):
            for axis, title in _axis_titles(fig).items():
                assert title and title not in columns, (run_dir.parent.name, fig.layout.title.text, axis, title)


def test_compression_ratio_is_a_percentage_everywhere(llama_quick: Path) -> None:
    figures = _figures(llama_quick)
    against_cr = [fig for fig in figures if fig.layout.xaxis.title.text == "compression ratio of targeted linears (%)"]
    assert against_cr and {fig.layout.yaxis.title.text for fig in against_cr} >= {"mean task accuracy"}
    for fig in against_cr:
        xs = [x for trace in fig.data for x in trace.x]
        assert min(xs) == 0 and 40 < max(xs) <= 100, xs  # dense at 0, CR 50 % runs near 50
    page = (llama_quick / "report.html").read_text()
    headers = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", page)]
    assert "cr" not in headers and "CR %" in headers and "achieved CR %" in headers
    run = load_run(llama_quick)
    achieved = re.search(r"<th>achieved CR %</th>", page)
    assert achieved and all(0 <= 100 * r["cr"] <= 100 for r in run.rows if r["status"] == "ok")


def test_decode_speed_carries_its_noise_flag(llama_quick: Path) -> None:
    run = load_run(llama_quick)
    noisy = sum(bool(r.get("generate_noisy")) for r in run.rows)
    assert 0 < noisy < len(run.rows)
    page = html.unescape((llama_quick / "report.html").read_text())
    assert "<th>generate_noisy</th>" in page
    assert f"{noisy} of {len(run.rows)} decode speeds noisy" in page
    decode = next(f for f in _figures(llama_quick) if "decode" in (f.layout.title.text or ""))
    symbols = {s for trace in decode.data for s in ([trace.marker.symbol] if isinstance(trace.marker.symbol, str)
                                                   else list(trace.marker.symbol or []))}
    assert "circle-open" in symbols  # noisy points drawn hollow


def test_reports_and_index_link_to_each_other(kernels_run: tuple[Path, Path], llama_quick: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    for run_dir in (kernels_run[1], llama_quick):
        shutil.copytree(run_dir, root / run_dir.parent.name / run_dir.name, ignore=shutil.ignore_patterns(".lock"))
    publish([p.parent for p in root.glob("*/*/run.json")])
    for report in root.glob("*/*/report.html"):
        back = [h for h in _hrefs(report.read_text()) if h.endswith("index.html")]
        assert back and (report.parent / back[0]).resolve() == (root / "index.html").resolve()
    linked = {(root / h).resolve() for h in _hrefs((root / "index.html").read_text())}
    assert linked == {p.resolve() for p in root.glob("*/*/report.html")}



def test_publish_rebuilds_the_reference_runs_index_and_published_tables_from_rows(
        kernels_run: tuple[Path, Path], llama_quick: Path, tmp_path: Path) -> None:
    """Reference runs under ``results/reference`` and a user's own run share one results root:
    one plotly.js, one index listing the reference runs first; the docs' blocks are rewritten."""
    results = tmp_path / "results"
    reference = results / REFERENCE / "llama-compress" / llama_quick.name
    shutil.copytree(llama_quick, reference, ignore=shutil.ignore_patterns(".lock", "*.html", "table.*"))
    own = results / "kernels" / kernels_run[1].name
    shutil.copytree(kernels_run[1], own, ignore=shutil.ignore_patterns(".lock"))
    page = tmp_path / "README.md"
    page.write_text("# toy\n<!-- results:llama-compress:headline -->\nstale\n<!-- /results -->\n")
    assert publish_reference(results, docs_root=tmp_path) == [page]
    text = page.read_text()
    assert "stale" not in text and f"[{reference.name}](results/reference/llama-compress/{reference.name}/report.html)" in text
    assert (reference / "table.md").is_file() and not (results / REFERENCE / PLOTLY_FILE).exists()
    report = (reference / "report.html").read_text()
    assert f"src='../../../{PLOTLY_FILE}'" in report and (results / PLOTLY_FILE).is_file()
    back = [h for h in _hrefs(report) if h.endswith("index.html")]
    assert back and (reference / back[0]).resolve() == (results / "index.html").resolve()
    index_page = (results / "index.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", index_page) == ["Reference runs", "Your runs"]
    links = _hrefs(index_page)
    assert links == ["which-structure.html", "cross-model.html", f"reference/llama-compress/{reference.name}/report.html",
                     f"kernels/{own.name}/report.html"]
    assert (results / "which-structure.html").is_file() and (results / "cross-model.html").is_file()
    assert publish_reference(results, docs_root=tmp_path) == []  # regenerating again changes nothing

def test_index_shows_cases_reliability_and_families(kernels_run: tuple[Path, Path], llama_quick: Path,
                                                    tmp_path: Path) -> None:
    root = tmp_path / "results"
    for run_dir in (kernels_run[1], llama_quick):
        shutil.copytree(run_dir, root / run_dir.parent.name / run_dir.name, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((root / "kernels" / kernels_run[1].name / "run.json").read_text())
    meta["reliability"] = {"unreliable": True, "reasons": ["a", "b"]}
    (root / "kernels" / kernels_run[1].name / "run.json").write_text(json.dumps(meta))
    page = html.unescape(index(root).read_text())
    headers = re.findall(r"<th>(.*?)</th>", page)
    assert {"reliability", "families", "cases"} <= set(headers)
    cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", page)]
    assert "unreliable (2 reasons)" in cells and "not assessed" in cells
    assert "dense, lowrank, blockdiag" in cells  # the kernels run's families, in plot order
    families = load_run(llama_quick).frame()["family"]
    assert any(c.startswith("dense, ") and all(f in c for f in families) for c in cells)


def test_training_tables_show_the_mean_and_sd_over_seeds(tmp_path: Path) -> None:
    from suites.train_lm.report import summary

    run_dir = fake_run(tmp_path / "results", "train-lm", train_case, quick=False, families=["lowrank"])
    table = summary(load_run(run_dir)).set_index("family")
    one = train_case({"family": "lowrank", "rho": 0.25}, None)[0]["val_ppl"]  # seed 0's score
    assert table.loc["lowrank", "val_ppl @0.25"] == pytest.approx(one + 0.05)  # seeds 0, 1, 2 add 0, .05, .1
    assert table.loc["lowrank", "val_ppl_sd @0.25"] == pytest.approx(0.05)
    assert table.loc["lowrank", "seeds"] == "3" and table.loc["dense", "seeds"] == "3"
    page = _published(run_dir)
    assert "mean over its 3 training seeds" in page and "val_ppl_sd" in page


def test_the_llama_compress_published_tables_read_the_stored_rows(tmp_path: Path) -> None:
    from suites.llama_compress.report import protocol_table, retrained_table, speed_table

    run = load_run(fake_run(tmp_path / "results", "llama-compress", llama_compress_case, quick=False,
                            families=["lowrank"]))
    protocol = protocol_table(run).set_index("figure")
    assert protocol.loc["perplexity", "half-width %"] == pytest.approx(3.0)  # the fake interval is +-3 %
    assert protocol.loc["perplexity", "units"] == "2 windows, 511 tokens"
    assert protocol.loc["social_iqa acc", "interval or ± stderr"] == "± 0.02"
    retrained = retrained_table(run).set_index("CR %")
    before, after, control = (retrained.loc[50, c] for c in ("ppl before", "ppl after", "ppl control"))
    assert after == before - 2.0 and retrained.loc[50, "gap closed"] == pytest.approx((before - after) / (before - control))
    speed = speed_table(run)
    assert len(speed) == 1 + 3 * 2 and "generate_tokens_per_s" in speed  # dense + 3 rhos x 2 objectives
