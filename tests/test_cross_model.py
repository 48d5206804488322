"""The cross-model page: two models' llama-compress reference runs ranked against each other,
orderings that hold, flip or stay inside the noise, from stored rows with known answers."""
from __future__ import annotations

import html
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from structbench.results import REFERENCE, load_run
from suites.cross_model import FLIPS, HOLDS, UNSETTLED, compare, ordering, runs_by_model, scores, write_page
from tests.stored_runs import fake_run, llama_compress_case

WINDOWS, TOKENS = 64, 511


def _model_case(strength: dict[str, float]) -> Any:
    """Rows whose per-window losses put each family at ``strength`` (nats per token above the
    dense model) with a little window-to-window noise shared by all models of a run (the same
    text), so paired intervals are tight and a gap of 0.05 is clear while 0.0001 is not."""
    text = [random.Random(w).gauss(0, 0.05) for w in range(WINDOWS)]

    def case(case: dict[str, Any], ctx: Any) -> list[dict[str, Any]]:
        row = llama_compress_case(case, ctx)[0]
        base = 2.0 + (0.0 if case["family"] == "dense" else strength[case["family"]])
        noise = random.Random(json.dumps(case, sort_keys=True))
        nll = [TOKENS * (base + t + noise.gauss(0, 0.001)) for t in text]
        row.update(ppl_window_nll=nll, ppl_window_tokens=[TOKENS] * WINDOWS,
                   perplexity=math.exp(sum(nll) / (TOKENS * WINDOWS)), ppl_tokens=TOKENS * WINDOWS,
                   ppl_windows=WINDOWS)
        return [row]

    return case


def _two_models(tmp_path: Path) -> Path:
    """SmolLM2-like and Gemma3-like reference runs: lowrank < monarch < blast < pixelfly on both,
    except that blast and monarch swap on the second (a flip) and pixelfly is within the noise of
    blast on the first (unsettled)."""
    results = tmp_path / "results"
    reference = results / REFERENCE
    families = ["lowrank", "monarch", "blast", "pixelfly"]
    first = fake_run(reference, "llama-compress", _model_case({"lowrank": 0.1, "monarch": 0.2, "blast": 0.3,
                                                                 "pixelfly": 0.3001}), families=families)
    second = fake_run(reference, "llama-compress", _model_case({"lowrank": 0.1, "monarch": 0.3, "blast": 0.2,
                                                                  "pixelfly": 0.4}), families=families)
    meta = json.loads((second / "run.json").read_text())  # as if run with --config suites/llama_compress/gemma3.yaml
    meta["config"]["model"], meta["cli"]["config"] = "gemma3-270m", "suites/llama_compress/gemma3.yaml"
    (second / "run.json").write_text(json.dumps(meta))
    for run_dir in (first, second):
        (run_dir / "report.html").write_text("<p>report</p>")
    return results


def test_orderings_hold_flip_or_stay_inside_the_noise(tmp_path: Path) -> None:
    results = _two_models(tmp_path)
    runs = runs_by_model(results)
    assert set(runs) == {"smollm2-135m-instruct", "gemma3-270m"}
    a, b = runs["smollm2-135m-instruct"], runs["gemma3-270m"]
    ranks = scores(a)
    calibrated = ranks[ranks["objective"] == "calibrated"].set_index("family")["rank"].to_dict()
    assert calibrated == {"lowrank": 1, "monarch": 2, "blast": 3, "pixelfly": 4}
    summary, pairs = compare(a, b)
    assert set(summary["objective"]) == {"frobenius", "calibrated"} and set(summary["CR %"]) == {50}
    line = summary[summary["objective"] == "calibrated"].iloc[0]
    assert line["families"] == 4 and (line[HOLDS], line[FLIPS], line[UNSETTLED]) == (4, 1, 1)
    assert line["flipped pairs"] == "monarch vs blast"
    # tau over 4 families with one swapped pair and one near-tie: well below 1, above 0
    assert 0 < line["kendall tau"] < 1 and 0 <= line["p"] <= 1
    verdict = pairs[(pairs["objective"] == "calibrated") & (pairs["family"] == "blast") & (pairs["against"] == "pixelfly")]
    assert verdict.iloc[0]["on a"] == "not distinguishable" and verdict.iloc[0]["on b"] == "better"
    assert verdict.iloc[0]["ordering"] == UNSETTLED
    page = html.unescape(write_page(results).read_text())
    assert "Of 12 orderings of two families" in page and "8 hold on both smollm2-135m-instruct and gemma3-270m" in page
    assert "CR 50 % calibrated: monarch vs blast" in page


def test_the_page_says_when_there_is_nothing_to_compare(tmp_path: Path) -> None:
    page = html.unescape(write_page(tmp_path).read_text())
    assert "none is stored" in page
    fake_run(tmp_path / REFERENCE, "llama-compress", llama_compress_case, families=["lowrank"])
    assert "only smollm2-135m-instruct's is stored" in html.unescape(write_page(tmp_path).read_text())


@pytest.mark.parametrize("first, second, expected", [
    ("better", "better", HOLDS), ("worse", "worse", HOLDS), ("better", "worse", FLIPS),
    ("better", "not distinguishable", UNSETTLED), ("not distinguishable", "worse", UNSETTLED), ("", "better", UNSETTLED),
])
def test_an_ordering_is_a_flip_only_when_both_models_call_it(first: str, second: str, expected: str) -> None:
    assert ordering(first, second) == expected


def test_publish_writes_the_page_and_links_it_from_the_index(tmp_path: Path) -> None:
    from structbench.publish import publish_reference

    results = _two_models(tmp_path)
    publish_reference(results, docs_root=tmp_path)
    index = (results / "index.html").read_text()
    assert "cross-model.html" in index and (results / "cross-model.html").is_file()
    assert load_run(next((results / REFERENCE / "llama-compress").iterdir())).suite == "llama-compress"
