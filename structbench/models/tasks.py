"""Zero-shot multiple-choice tasks from the ``evals`` wheel on PyPI, fetched once into a cache.

No package ships HellaSwag, PIQA or ARC, and there is no dataset hub here. The ``evals``
wheel (``evals==3.0.1.post1``, MIT, 46 MB) carries real, human-written multiple-choice sets
in its registry: Social IQa (``theory_of_mind/socialiqa/test.jsonl``, 2,224 items, 3
choices) and QuaRTz (``quartz/samples.jsonl``, 3,860 items, 2 choices), each item a chat
prompt whose last message holds the question and its lettered options, with the right letter
as ``ideal``. ``ensure_tasks`` downloads the wheel once with pip (``download_wheel``: the
machine's own index and settings), checks its SHA-256, copies only the files the suite
needs into ``<cache>/tasks/evals/`` and deletes the wheel; later runs read those files
offline. A task keeps the file as the wheel has it, so its SHA-256 in ``run.json`` names the
published data.

Items become :class:`MultipleChoice` with lm-evaluation-harness' framing: the context is
``"Q: <question>\\nA:"`` and each choice is scored as the continuation ``" <choice>"``; the
choices are put in a seeded order (the same on every run), so no letter position is favoured.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from structbench.cache import cache_root
from structbench.errors import StructbenchError

REQUIREMENT = "evals==3.0.1.post1"
WHEEL = "evals-3.0.1.post1-py3-none-any.whl"
WHEEL_SHA256 = "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78"
MANUAL_COMMAND = (
    f"pip download --no-deps --only-binary=:all: {REQUIREMENT} -d . && python -c \"from structbench.models.tasks "
    f"import *; extract_tasks('{WHEEL}', list(TASKS))\""
)

Parsed = tuple[str, tuple[str, ...], int]
"""A record's question, its choices in the file's order, and the index of the right one."""


def _inline_options(text: str, ideal: str) -> Parsed | None:
    """``"<question> A: <a>; B: <b>; C: <c>."`` (Social IQa's layout)."""
    found = re.fullmatch(r"(?P<q>.*?)\s+A: (?P<a>.*?); B: (?P<b>.*?); C: (?P<c>.*?)\.?", text.strip(), re.S)
    if found is None or ideal not in "ABC" or len(ideal) != 1:
        return None
    return found["q"].strip(), (found["a"].strip(), found["b"].strip(), found["c"].strip()), "ABC".index(ideal)


def _option_lines(text: str, ideal: str) -> Parsed | None:
    """``"<question>\\n\\n A: <a>\\n B: <b>"`` (QuaRTz's layout): one lettered option a line."""
    question, _, block = text.rpartition("\n\n")
    options = re.findall(r"^\s*([A-Z]): (.*?)\s*$", block, re.M)
    letters = [letter for letter, _ in options]
    if not question.strip() or len(options) < 2 or letters != [chr(65 + k) for k in range(len(options))] \
            or ideal not in letters:
        return None
    return question.strip(), tuple(option for _, option in options), letters.index(ideal)


@dataclass(frozen=True)
class TaskSpec:
    """Where a task lives inside the wheel, how its items read, and why it is in the list."""

    name: str
    member: str  # path of the task's JSONL file inside the wheel
    parse: Callable[[str, str], Parsed | None]  # (last message's text, ideal letter) -> item
    note: str


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("social_iqa", "evals/registry/data/theory_of_mind/socialiqa/test.jsonl", _inline_options,
                 "social commonsense (Social IQa), 3 choices, 2,224 items"),
        TaskSpec("quartz", "evals/registry/data/quartz/samples.jsonl", _option_lines,
                 "qualitative relationships in science (QuaRTz), 2 choices, 3,860 items"),
    )
}


@dataclass(frozen=True)
class MultipleChoice:
    """One item: the model scores ``context + choices[i]`` for every ``i``; ``gold`` is right."""

    context: str
    choices: tuple[str, ...]
    gold: int


def tasks_dir(cache: Path | None = None) -> Path:
    return (cache if cache is not None else cache_root()) / "tasks" / "evals"


def task_file(name: str, cache: Path | None = None) -> Path:
    if name not in TASKS:
        raise StructbenchError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return tasks_dir(cache) / f"{name}.jsonl"


def download_wheel(folder: Path) -> Path:
    """Download the ``evals`` wheel into ``folder`` with pip and check its SHA-256; the wheel.

    pip rather than a URL: it reads the machine's index, mirror and proxy settings, and a
    wheel needs no build to be downloaded (``--no-deps``: none of its dependencies are read).
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", REQUIREMENT, "-d", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StructbenchError(f"could not download {REQUIREMENT} ({exc}); where PyPI is reachable run: "
                               f"{MANUAL_COMMAND}") from exc
    target = folder / WHEEL
    if done.returncode != 0 or not target.is_file():
        why = (done.stderr.strip().splitlines() or ["pip gave no reason"])[-1]
        raise StructbenchError(f"could not download {REQUIREMENT} ({why}); where PyPI is reachable run: {MANUAL_COMMAND}")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise StructbenchError(f"{WHEEL} has sha256 {digest}, not the {WHEEL_SHA256} this project was checked with")
    return target


def extract_tasks(archive: Path | str, names: list[str], cache: Path | None = None) -> None:
    """Copy the JSONL file of each of ``names`` out of the wheel ``archive`` into the cache."""
    archive = Path(archive)
    targets = {name: task_file(name, cache) for name in names}  # unknown names fail before the archive is read
    with zipfile.ZipFile(archive) as wheel:
        inside = set(wheel.namelist())
        absent = sorted(name for name in names if TASKS[name].member not in inside)
        if absent:
            raise StructbenchError(f"{archive.name} has no {absent} task files")
        for name, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(wheel.read(TASKS[name].member))
            tmp.replace(target)


def ensure_tasks(names: list[str], cache: Path | None = None, log: Callable[[str], None] | None = None) -> None:
    """Make sure every task in ``names`` is cached, downloading the wheel once if any is missing."""
    missing = [n for n in names if not task_file(n, cache).is_file()]
    if not missing:
        return
    if log is not None:
        log(f"fetching tasks {missing} ({REQUIREMENT}, 46 MB, once) into {tasks_dir(cache)}")
    folder = Path(tempfile.mkdtemp(prefix="structbench-evals-"))
    try:
        extract_tasks(download_wheel(folder), missing, cache)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _item(record: dict, spec: TaskSpec, rng: random.Random) -> MultipleChoice | None:
    messages, ideal = record.get("input"), record.get("ideal")
    if not isinstance(messages, list) or not messages or not isinstance(ideal, str):
        return None
    text = messages[-1].get("content") if isinstance(messages[-1], dict) else None
    parsed = spec.parse(text, ideal) if isinstance(text, str) else None
    if parsed is None:
        return None
    question, choices, gold = parsed
    order = list(range(len(choices)))
    rng.shuffle(order)
    return MultipleChoice(f"Q: {question}\nA:", tuple(f" {choices[k]}" for k in order), order.index(gold))


def load_task(name: str, items: int | None = None, cache: Path | None = None, seed: int = 0) -> list[MultipleChoice]:
    """The first ``items`` items of a fixed, seeded shuffle of the task (all when ``None``).

    The same ``(items, seed)`` gives the same subset on every run, so rows of different
    families and runs are scored on identical items.
    """
    path = task_file(name, cache)
    if not path.is_file():
        raise StructbenchError(f"task {name!r} is not cached at {path}; ensure_tasks([{name!r}]) fetches it")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(records)
    parsed = [item for item in (_item(r, TASKS[name], rng) for r in records) if item is not None]
    if not parsed:
        raise StructbenchError(f"task {name!r} ({path}) has no multiple-choice items in its layout")
    return parsed if items is None else parsed[:items]


def chance_accuracy(items: list[MultipleChoice]) -> float:
    """Expected accuracy of a uniform random guess, the bar a model must clearly beat."""
    return sum(1 / len(item.choices) for item in items) / len(items)
