"""Zero-shot multiple-choice tasks from BIG-bench, fetched once from PyPI into a cache.

No package ships HellaSwag, PIQA or ARC, and there is no dataset hub here. BIG-bench's
``bigbench==1.0.0`` source distribution on PyPI (Apache-2.0) carries its tasks as
``bigbench/benchmark_tasks/<task>/task.json`` with ``target_scores`` per example: real,
human-written multiple-choice items. The sdist is 358 MB (1.7 GB unpacked), so
``ensure_tasks`` downloads it once into a temporary folder (``download_sdist``), extracts only the
``task.json`` files the suite needs into ``<cache>/tasks/bigbench/`` and deletes the
archive. Later runs read the small JSON files (offline).

Items become :class:`MultipleChoice` with lm-evaluation-harness' framing: the context is
``"Q: <input>\\nA:"`` (BIG-bench's default example prefixes) and each choice is scored as
the continuation ``" <choice>"``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tarfile
import urllib.request
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from structbench.errors import StructbenchError
from structbench.cache import cache_root

BIGBENCH = "bigbench"
SDIST = "bigbench-1.0.0.tar.gz"
PYPI_SIMPLE = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
MANUAL_COMMAND = (
    f"curl -LO https://files.pythonhosted.org/packages/95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/{SDIST}"
    f" && python -c \"from structbench.models.tasks import *; extract_tasks('{SDIST}', list(TASKS))\""
)


@dataclass(frozen=True)
class TaskSpec:
    """Where a task lives inside the BIG-bench sdist, and why it is in the list."""

    name: str
    member: str  # path of task.json inside the sdist, below the top folder
    note: str


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("social_iqa", "bigbench/benchmark_tasks/social_iqa/task.json",
                 "social commonsense (Social IQa), 3 choices"),
        TaskSpec("goal_step_wikihow/goal_inference",
                 "bigbench/benchmark_tasks/goal_step_wikihow/goal_inference/task.json",
                 "which goal a wikiHow step serves, 4 choices (close to HellaSwag)"),
        TaskSpec("goal_step_wikihow/step_inference",
                 "bigbench/benchmark_tasks/goal_step_wikihow/step_inference/task.json",
                 "which step serves a wikiHow goal, 4 choices"),
        TaskSpec("cause_and_effect/one_sentence",
                 "bigbench/benchmark_tasks/cause_and_effect/one_sentence/task.json",
                 "which sentence states a plausible cause and effect, 2 choices"),
        TaskSpec("physical_intuition", "bigbench/benchmark_tasks/physical_intuition/task.json",
                 "physics commonsense, 4 choices"),
    )
}


@dataclass(frozen=True)
class MultipleChoice:
    """One item: the model scores ``context + choices[i]`` for every ``i``; ``gold`` is right."""

    context: str
    choices: tuple[str, ...]
    gold: int


def tasks_dir(cache: Path | None = None) -> Path:
    return (cache if cache is not None else cache_root()) / "tasks" / "bigbench"


def task_file(name: str, cache: Path | None = None) -> Path:
    if name not in TASKS:
        raise StructbenchError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return tasks_dir(cache) / name / "task.json"


def _sdist_link(index: str) -> tuple[str, str]:
    """URL and sha256 of the BIG-bench sdist from the package index's JSON simple API (PEP 691)."""
    request = urllib.request.Request(f"{index.rstrip('/')}/{BIGBENCH}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if entry["filename"] == SDIST:
            return entry["url"], entry["hashes"]["sha256"]
    raise StructbenchError(f"{index} lists no {SDIST}")


def download_sdist(folder: Path, index: str = PYPI_SIMPLE) -> Path:
    """Download the BIG-bench sdist into ``folder`` and check its sha256; return the archive.

    Not ``pip download``: pip builds the sdist's metadata to check it, and current pip
    rejects BIG-bench's direct-URL dependency (``bleurt @ file://...``) even with
    ``--no-deps``, so the archive is fetched from the same index by its listed URL.
    """
    target = folder / SDIST
    try:
        url, sha256 = _sdist_link(index)
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError, KeyError) as exc:
        raise StructbenchError(
            f"could not download {SDIST} from {index} ({exc}); where the index is reachable run: "
            f"{MANUAL_COMMAND}"
        ) from exc
    if digest.hexdigest() != sha256:
        raise StructbenchError(f"{SDIST} from {url} has sha256 {digest.hexdigest()}, the index lists {sha256}")
    return target


def extract_tasks(archive: Path | str, names: list[str], cache: Path | None = None) -> None:
    """Copy the ``task.json`` of each of ``names`` out of the sdist ``archive`` into the cache."""
    archive = Path(archive)
    for name in names:
        task_file(name, cache)  # unknown names fail before the archive is read
    wanted = {TASKS[n].member: n for n in names}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            inner = member.name.split("/", 1)[-1]  # drop the top folder "bigbench-1.0.0/"
            if inner in wanted and member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                target = task_file(wanted.pop(inner), cache)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(source.read())
                tmp.replace(target)
            if not wanted:
                break
    if wanted:
        raise StructbenchError(f"{archive.name} has no {sorted(wanted.values())} task files")


def ensure_tasks(names: list[str], cache: Path | None = None, log: Callable[[str], None] | None = None) -> None:
    """Make sure every task in ``names`` is cached, downloading the sdist once if any is missing."""
    missing = [n for n in names if not task_file(n, cache).is_file()]
    if not missing:
        return
    if log is not None:
        log(f"fetching BIG-bench tasks {missing} ({SDIST}, 358 MB, once) into {tasks_dir(cache)}")
    folder = Path(tempfile.mkdtemp(prefix="structbench-bigbench-"))
    try:
        extract_tasks(download_sdist(folder), missing, cache)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _item(example: dict, rng: random.Random) -> MultipleChoice | None:
    scores = example.get("target_scores")
    if not scores or not isinstance(example.get("input"), str):
        return None
    choices = list(scores)
    best = max(scores.values())
    if sum(1 for v in scores.values() if v == best) != 1:
        return None  # ambiguous gold: accuracy would be ill-defined
    rng.shuffle(choices)  # the files list the right answer first in some tasks
    return MultipleChoice(f"Q: {example['input'].strip()}\nA:", tuple(f" {c.strip()}" for c in choices),
                          choices.index(max(choices, key=scores.__getitem__)))


def load_task(name: str, items: int | None = None, cache: Path | None = None, seed: int = 0) -> list[MultipleChoice]:
    """The first ``items`` items of a fixed, seeded shuffle of the task (all when ``None``).

    The same ``(items, seed)`` gives the same subset on every run, so rows of different
    families and runs are scored on identical items.
    """
    path = task_file(name, cache)
    if not path.is_file():
        raise StructbenchError(f"task {name!r} is not cached at {path}; ensure_tasks([{name!r}]) fetches it")
    data = json.loads(path.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    examples = list(data.get("examples", []))
    rng.shuffle(examples)
    parsed = [item for item in (_item(e, rng) for e in examples) if item is not None]
    if not parsed:
        raise StructbenchError(f"task {name!r} ({path}) has no multiple-choice items with target_scores")
    return parsed if items is None else parsed[:items]


def chance_accuracy(items: list[MultipleChoice]) -> float:
    """Expected accuracy of a uniform random guess, the bar a model must clearly beat."""
    return sum(1 / len(item.choices) for item in items) / len(items)
