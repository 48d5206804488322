"""A generated report opened in Debian's headless Chromium: the plots render, tables sort,
nothing is fetched from the network and the console stays clean.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe``
(JSON messages separated by NUL bytes on file descriptors 3 and 4), which needs only the
standard library: no websocket client, no browser-driver package. Screenshots of both
pages are saved next to the test's temporary results for a human to look at.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import unquote
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BASH = shutil.which("bash")
pytestmark = [pytest.mark.browser, pytest.mark.slow,  # each test starts Chromium
              pytest.mark.skipif(CHROMIUM is None or BASH is None,
                                 reason="headless chromium (or bash) not installed; scripts/setup.sh --test installs chromium")]


class DevTools:
    """A headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        # Chromium reads commands on fd 3 and answers on fd 4. The child's ends are moved
        # there by bash's redirections rather than a Python preexec_fn, which can deadlock
        # after fork in a process with other threads (torch's, pytest's). Both are first
        # copied above 10 so that no redirection overwrites the other's source (dash
        # cannot redirect fds above 9, hence bash).
        to_browser, self._to_browser = self._high_pipe()
        self._from_browser, from_browser = self._high_pipe()
        self.log = profile / "chromium.log"
        self.proc = subprocess.Popen(
            [BASH, "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-',
             CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )
        os.close(to_browser)
        os.close(from_browser)
        self.events: list[dict[str, Any]] = []
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        page = next(t for t in self.call("Target.getTargets", timeout=90)["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    @staticmethod
    def _high_pipe() -> tuple[int, int]:
        ends = []
        for fd in os.pipe():
            ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
            os.close(fd)
        return ends[0], ends[1]

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                (self._replies.put if "id" in message else self.events.append)(message)
        self._replies.put({"id": None})  # the browser closed its end: stop waiting

    def call(self, method: str, session: bool = False, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise AssertionError(f"chromium gave no answer to {method} in {timeout} s "
                                     f"(exit status {self.proc.poll()}); its log ends:\n{tail}") from None
            if reply["id"] is None:
                raise AssertionError(f"chromium exited (status {self.proc.wait()}) during {method}; its log ends:\n"
                                     + self.log.read_text(errors="replace")[-2000:])
            if reply["id"] == self._next_id:
                assert "error" not in reply, reply
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 60) -> None:
        """Navigate and wait until the JavaScript expression ``ready`` is true."""
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"document.readyState === 'complete' && ({ready})"):
            assert time.monotonic() < deadline, f"{url} not ready: {ready}"
            time.sleep(0.2)

    def screenshot(self, path: Path) -> None:
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))

    def console_errors(self) -> list[str]:
        errors = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                errors.append(json.dumps(p["exceptionDetails"])[:300])
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                errors.append(f"console.{p['type']}: {json.dumps(p['args'])[:300]}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                errors.append(f"log: {p['entry']['text']}")
        return errors

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_browser)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    tools = DevTools(tmp_path_factory.mktemp("chromium-profile"))
    yield tools
    tools.close()


PLOTS_DRAWN = ("document.querySelectorAll('.plotly-graph-div').length > 0 && [...document.querySelectorAll('.plotly-graph-div')]"
               ".every(d => d.querySelector('.main-svg') && d._fullLayout)")

READY = f"(document.querySelectorAll('.plotly-graph-div').length === 0 || {PLOTS_DRAWN})"


def test_run_report_renders_offline_without_errors(kernels_run: tuple[Path, Path], browser: DevTools) -> None:
    out, run_dir = kernels_run
    browser.events.clear()
    browser.open((run_dir / "report.html").as_uri(), PLOTS_DRAWN)
    plots = browser.evaluate("""[...document.querySelectorAll('.plotly-graph-div')].map(d => ({
        title: d._fullLayout.title.text || '', traces: d.data.length, width: d.getBoundingClientRect().width,
        drawn: d.querySelectorAll('.scatterlayer .trace, .heatmaplayer .hm, .hm image').length}))""")
    # summary heatmaps (efficiency, its ceiling), 3 per (shape, rho) with a structured family (tiny, odd), roofline
    assert len(plots) == 2 + 3 * 2 + 1
    for plot in plots:
        assert plot["traces"] > 0 and plot["drawn"] > 0, plot
        assert plot["width"] > 300, plot  # laid out in its grid column, not collapsed
    titles = " | ".join(p["title"] for p in plots)
    assert "forward latency" in titles and "speedup" in titles and "efficiency" in titles and "GFLOP/s" in titles
    assert "ceiling" in titles
    browser.screenshot(out / "report.png")
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.console_errors() == []
    assert all(url.startswith(("file:", "data:", "about:")) for url in browser.requested_urls()), browser.requested_urls()
    assert browser.evaluate("window.Plotly !== undefined && window.__errors.length === 0")


def test_report_tables_sort_by_clicked_column(kernels_run: tuple[Path, Path], browser: DevTools) -> None:
    browser.open((kernels_run[1] / "report.html").as_uri(), PLOTS_DRAWN)
    sort = """(label => {
        const table = [...document.querySelectorAll('table.data')].find(t => [...t.tHead.rows[0].cells].some(c => c.textContent === label));
        const col = [...table.tHead.rows[0].cells].findIndex(c => c.textContent === label);
        table.tHead.rows[0].cells[col].click();
        return [...table.tBodies[0].rows].map(r => parseFloat(r.cells[col].textContent));
    })('median_s ↓')"""
    ascending = browser.evaluate(sort)
    assert len(ascending) == 10 and ascending == sorted(ascending)
    assert browser.evaluate(sort) == sorted(ascending, reverse=True)


def test_index_lists_and_links_runs(kernels_run: tuple[Path, Path], browser: DevTools) -> None:
    out, run_dir = kernels_run
    browser.events.clear()
    browser.open((out / "index.html").as_uri(), "document.querySelector('table.data') !== null")
    links = browser.evaluate("[...document.querySelectorAll('table.data a')].map(a => a.href)")
    assert links == [(run_dir / "report.html").as_uri()]
    headers = browser.evaluate("[...document.querySelectorAll('table.data th')].map(th => th.textContent)")
    assert {"run", "suite", "device", "date", "commit", "status"} <= set(headers)
    browser.screenshot(out / "index.png")
    assert browser.console_errors() == []


# ---- stored runs from elsewhere: hostile strings, pages on their own, many families ---------
@pytest.fixture(scope="module")
def hostile_results(kernels_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results root whose runs (kernels, approx, llama-compress, train-lm, and one of an
    unknown suite in a folder named by a payload) hold a payload in every shown string."""
    from structbench.publish import publish
    from tests.stored_runs import IMG, PAYLOAD, approx_run, fake_run, llama_compress_case, poison, train_case

    out = tmp_path_factory.mktemp("hostile") / "results"
    kernels = out / "kernels" / kernels_run[1].name
    shutil.copytree(kernels_run[1], kernels, ignore=shutil.ignore_patterns("*.html", ".lock"))
    poison(kernels)
    poison(approx_run(out), keep=("experiment", "source"))
    poison(fake_run(out, "llama-compress", llama_compress_case))
    poison(fake_run(out, "train-lm", train_case))
    unknown = out / f"elsewhere{IMG}" / f"run{IMG}"
    shutil.copytree(kernels, unknown)
    meta = json.loads((unknown / "run.json").read_text())
    meta["suite"]["name"] = PAYLOAD
    (unknown / "run.json").write_text(json.dumps(meta))
    publish([path.parent for path in sorted(out.glob("*/*/run.json"))])
    return out


def _pages(root: Path) -> list[Path]:
    return [root / "index.html", *sorted(root.glob("*/*/report.html"))]


def test_hostile_strings_are_shown_as_text_and_never_run(hostile_results: Path, browser: DevTools) -> None:
    from tests.stored_runs import IMG, SCRIPT

    pages = _pages(hostile_results)
    assert len(pages) == 6
    for page in pages:
        source = page.read_text()
        assert IMG not in source and SCRIPT not in source, page  # escaped wherever it is written
        browser.events.clear()
        browser.open(page.as_uri(), READY)
        plots = browser.evaluate("document.querySelectorAll('.plotly-graph-div').length > 0")
        time.sleep(0.5)  # an injected image's onerror fires after its load fails
        assert browser.evaluate("document.body.dataset.pwned") is None, page
        shown = browser.evaluate("document.body.innerText")
        assert IMG in shown and SCRIPT in shown, page
        if plots:  # titles, legends, ticks and labels of the charts: the payload is drawn as text
            drawn = browser.evaluate("[...document.querySelectorAll('.plotly-graph-div .main-svg')].map(s => s.textContent).join(' ')")
            assert IMG in drawn, page
        assert browser.evaluate("window.__errors.length") == 0, page


def test_the_committed_index_shows_every_reference_run_and_their_reports_draw_offline(browser: DevTools) -> None:
    """``results/index.html`` as a fresh clone has it: the reference runs listed first, each
    report drawing its plots from the one committed plotly.js, nothing fetched."""
    from structbench.results import PROJECT_ROOT, REFERENCE, list_runs

    results = PROJECT_ROOT / "results"
    runs = list_runs(results / REFERENCE)
    assert runs, f"no reference run is stored under {results / REFERENCE}"
    browser.events.clear()
    browser.open((results / "index.html").as_uri(), "document.querySelector('table.data') !== null")
    assert browser.evaluate("document.querySelector('h2').textContent") == "Reference runs"
    listed = browser.evaluate("[...document.querySelector('table.data').querySelectorAll('a')].map(a => a.href)")
    assert listed == [(run.run_dir / "report.html").as_uri() for run in runs]
    for run in runs:
        browser.open((run.run_dir / "report.html").as_uri(), PLOTS_DRAWN)
        assert browser.evaluate("window.__errors.length") == 0, run.run_dir
    _which_structure_draws_every_family_and_a_click_opens_a_report(browser, results)
    assert browser.console_errors() == []
    assert all(url.startswith(("file:", "data:", "about:")) for url in browser.requested_urls()), browser.requested_urls()


def _which_structure_draws_every_family_and_a_click_opens_a_report(browser: DevTools, results: Path) -> None:
    from structbench.families import list_families

    browser.open((results / "which-structure.html").as_uri(), PLOTS_DRAWN)
    assert browser.evaluate("window.__errors.length") == 0
    coverage = browser.evaluate("""[...document.querySelectorAll('h2')].find(h => h.textContent === 'Coverage')
        .nextElementSibling.nextElementSibling.querySelectorAll('tbody tr td:first-child')""" + ".length")
    assert coverage == len(list_families())
    target = browser.evaluate("""(() => { for (const d of document.querySelectorAll('.plotly-graph-div'))
        for (const t of d.data) if (t.customdata && t.customdata.length) {
            d.emit('plotly_click', {points: [{customdata: t.customdata[0]}]}); return t.customdata[0]; }
        return null; })()""")
    if target is not None:  # a figure with links: the click went to the run's report
        expected = (results / unquote(target)).resolve().as_uri()
        deadline = time.monotonic() + 30
        while browser.evaluate("document.readyState === 'complete' && document.location.href") != expected:
            assert time.monotonic() < deadline, f"a click on a point did not open {expected}"
            time.sleep(0.2)
