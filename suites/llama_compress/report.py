"""Report of the llama-compress suite, from stored rows only.

The paper-shaped table (family, CR, re-trained?, perplexity, accuracy per task and their
average), perplexity and accuracy against CR per family with the dense model as the
reference line, and size and speed (parameters, bytes, MACs per token, throughput).
"""
from __future__ import annotations

import pandas as pd

from structbench.report.html import Section
from structbench.report.plots import family_rank, lines_by_family, scatter_by_family
from structbench.results import RunData

SPEED = ["family", "cr_linear", "cr_model", "objective", "retrained", "params", "bytes", "linear_params", "macs_per_token", "prefill_tokens_per_s",
         "generate_tokens_per_s", "rel_error_mean", "weighted_error_mean", "calibration_mode", "projection_seconds",
         "calibration_seconds", "retrain_seconds", "case_seconds", "hparams"]


def task_labels(frame: pd.DataFrame) -> list[str]:
    """Tasks present in the rows, in column order (``acc_<label>`` beside ``chance_<label>``)."""
    return [c.removeprefix("chance_") for c in frame.columns if c.startswith("chance_")]


def _objectives(ok: pd.DataFrame) -> pd.Series:
    """Each row's projection objective (rows of runs before the objective axis: ``frobenius``)."""
    return ok["objective"].fillna("frobenius") if "objective" in ok else pd.Series("frobenius", index=ok.index)


def _ordered(ok: pd.DataFrame) -> pd.DataFrame:
    ok = ok.assign(objective=_objectives(ok))
    return ok.assign(_f=ok["family"].map(lambda f: family_rank(f)[0]), _r=-ok["rho"]).sort_values(
        ["_f", "_r", "objective", "retrained"]).drop(columns=["_f", "_r"])


def paper_table(ok: pd.DataFrame) -> pd.DataFrame:
    """One line per model in the shape of the BLAST paper's Llama table.

    CR is the nominal compression of the targeted projections (1 - rho, in %); the
    achieved one is ``cr_linear`` in the size table, within a point of it (or the case is
    skipped, saying why: ``structbench.allocate``), beside the whole model's ``cr_model``.
    The objective is what the projection minimised (``frobenius``: the weights;
    ``calibrated``: the outputs on calibration text). Per task both ``acc`` (summed
    log-likelihood) and ``acc_norm`` (per character): a small model can sit at chance on
    one and clearly above it on the other.
    """
    tasks = task_labels(ok)
    out = pd.DataFrame({
        "family": ok["family"],
        "CR %": ((1 - ok["rho"]) * 100).round(0).astype(int),
        "objective": ok["objective"].where(ok["family"] != "dense", "-"),
        "re-trained": ok["retrained"].map({True: "yes", False: "no"}),
        "perplexity": ok["perplexity"],
        **{f"{task} {kind}": ok[f"{kind}_{task}"] for task in tasks for kind in ("acc", "acc_norm")},
        "average acc": ok["acc_avg"],
        "average acc_norm": ok["acc_norm_avg"],
    })
    return out.reset_index(drop=True)


def _notes(run: RunData, ok: pd.DataFrame) -> str:
    config = run.meta.get("config", {})
    quick = run.meta.get("cli", {}).get("quick")
    first = ok.iloc[0]
    chance = ", ".join(f"{t} {first[f'chance_{t}']:.3f} ({int(first[f'items_{t}'])} items)" for t in task_labels(ok))
    return (f"Model {config.get('model')}{' (--quick)' if quick else ''}: the linear projections "
            f"{', '.join(config.get('projections', []))} of decoder layers {config.get('layers')} replaced by each family at "
            f"rho = kept fraction of each matrix's parameters (CR = 1 - rho), projected from the pretrained weights "
            f"either in Frobenius norm or against calibration inputs ({_calibration_note(config)}). "
            f"Perplexity on {int(first['ppl_tokens'])} tokens of held-out Wikipedia lead sections "
            f"({int(first['ppl_windows'])} windows). Zero-shot accuracy: summed log-likelihood of each answer given "
            f"the question (lm-evaluation-harness scoring); chance: {chance}. SmolLM2's weights come from a 4-bit "
            f"GGUF expanded to fp32, not the original bf16 checkpoint.")


def _calibration_note(config: dict) -> str:
    calib = config.get("calibration")
    if not calib:
        return "not configured"
    return (f"{calib['tokens']} tokens of the Wikipedia train split in sequences of {calib['seq_len']}, "
            f"{calib['mode']} Grams, ridge {calib['damp']} x mean diagonal, {calib['refine_steps']} refinement steps "
            f"for families without a closed form")


def llama_compress_report(run: RunData) -> list[Section]:
    frame = run.frame()
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    sections: list[Section] = []
    if not ok.empty and "perplexity" in ok:
        ok = _ordered(ok.copy())
        ok["cr_linear"] = ok["cr_linear"].astype(float)
        sections.append(Section("Compressed Llama: perplexity and zero-shot accuracy", _notes(run, ok),
                                tables=[paper_table(ok)]))
        dense = ok[ok["family"] == "dense"]
        for (objective, retrained), part in ok[ok["family"] != "dense"].groupby(["objective", "retrained"]):
            part = pd.concat([dense, part])
            suffix = f" ({objective}{', re-trained' if retrained else ''})"
            reference = lambda col: float(dense[col].iloc[0]) if not dense.empty else None  # noqa: E731
            sections.append(Section(
                f"Quality against compression{suffix}",
                "x: achieved compression of the targeted projections (dense at 0); dotted: the dense model.",
                figures=[lines_by_family(part, "cr_linear", "perplexity", title=f"perplexity vs CR{suffix}", log_y=True,
                                         reference=reference("perplexity")),
                         lines_by_family(part, "cr_linear", "acc_avg", title=f"average zero-shot acc vs CR{suffix}",
                                         reference=reference("acc_avg"))]))
        sections.append(Section(
            "Size and speed",
            "MACs per token: fvcore over one forward of the whole model (eager attention, LM head included) divided "
            "by the tokens. Throughput: batch 1, medians; prefill = prompt tokens per second of one forward, "
            "generate = greedy decode steps per second with the KV cache.",
            figures=[scatter_by_family(ok, "macs_per_token", "generate_tokens_per_s", text="cr_linear",
                                       title="greedy decode tokens/s vs MACs per token"),
                     scatter_by_family(ok, "params", "perplexity", text="cr_linear", log_y=True, pareto=True,
                                       higher_is_better=False, title="perplexity vs parameters")],
            tables=[ok[[c for c in SPEED if c in ok.columns]]]))
    bad = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[0:0]
    if not bad.empty:
        columns = [c for c in ("family", "rho", "objective", "retrained", "status", "reason") if c in bad]
        sections.append(Section("Skipped and failed cases", tables=[bad[columns]]))
    return sections


def summary(run: RunData) -> pd.DataFrame:
    """The terminal's headline: the paper-shaped table."""
    frame = run.frame()
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    return paper_table(_ordered(ok)) if not ok.empty else pd.DataFrame()


REPORTS = {"llama-compress": llama_compress_report}
SUMMARIES = {"llama-compress": summary}
