"""The same multiple-choice items scored by lm-evaluation-harness itself (``lm-eval`` on PyPI).

This project scores zero-shot tasks with its own code (``structbench.models.evaluation``): it
batches, scores only the answer positions and runs any model with structured layers. The
harness is the field's reference, so this module hands it the very same items, as a local
JSON task (``dataset_path: json``) and the in-memory model (``HFLM(pretrained=model)``), and
returns its per-item picks: the tests require the two to agree item for item, and the
llama-compress suite can score with it (``tasks.scorer: lm-eval``).

The task mirrors this project's format: the context is ``"Q: <input>\\nA:"``, each choice is
``" <answer>"`` with its leading space, so the harness's ``target_delimiter`` is empty;
``acc_norm`` divides by the choice's length in characters, as here.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from structbench.errors import StructbenchError
from structbench.models.evaluation import ChoiceScores, bos_prefix, choice_scores
from structbench.models.tasks import MultipleChoice

PIP_COMMAND = "pip install lm-eval==0.4.13"
TASK = "structbench_items"


def _task_yaml(data: Path) -> str:
    return "\n".join([
        f"task: {TASK}",
        "dataset_path: json",
        f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}",
        "test_split: test",
        "output_type: multiple_choice",
        "doc_to_text: context",
        "doc_to_choice: choices",
        "doc_to_target: gold",
        'target_delimiter: ""',
        "metric_list: [{metric: acc}, {metric: acc_norm}]",
        "",
    ])


def harness_multiple_choice(model: nn.Module, tokenizer: Any, items: Sequence[MultipleChoice],
                            batch_size: int = 16) -> ChoiceScores:
    """``acc``/``acc_norm`` and per-item picks of ``items`` as lm-evaluation-harness scores them."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise StructbenchError(f"scoring with lm-evaluation-harness needs it installed: {PIP_COMMAND}") from None
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a local JSON task: nothing to fetch
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="structbench-harness-") as tmp:
        data = Path(tmp) / "items.jsonl"
        data.write_text("".join(json.dumps({"context": it.context, "choices": list(it.choices), "gold": it.gold}) + "\n"
                                for it in items))
        (Path(tmp) / f"{TASK}.yaml").write_text(_task_yaml(data))
        # the harness's BOS handling set to this project's (evaluation.bos_prefix), so both score the same tokens
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                  add_bos_token=bool(bos_prefix(tokenizer)))
        results = simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=tmp),
                                  num_fewshot=0, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    scores = choice_scores(items, [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples])
    for sample, item, pick, pick_norm in zip(samples, items, scores.picks, scores.picks_norm):
        # the harness's own per-item metrics must follow from the log-likelihoods it returned
        if (pick == item.gold) != bool(sample["acc"]) or (pick_norm == item.gold) != bool(sample["acc_norm"]):
            raise StructbenchError(f"lm-eval's acc/acc_norm disagree with its log-likelihoods on item {sample['doc_id']}")
    return scores
