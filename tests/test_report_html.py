"""report.html as a reader gets it: one file that carries its own plots, every table report.md has, and a
page that a real browser shows without an error, on screen and printed.

The results are built as `rayscale bench` and `rayscale tune` write them (the builders of test_report),
then `rayscale report` writes the page; the browser checks run headless Chromium (skipped without it).
"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from test_report import COSTS, PNG_SIGNATURE, bench_result, sweep

from rayscale.report import ReportConfig, parse_costs, run_report
from rayscale.report.document import Heading, Table, plain_text
from rayscale.report.sections import report_document
from rayscale.results import write_json_atomic
from rayscale.tune.results import CandidateSummary, TuneResult, write_tune_result

from browser import chromium_binary, load_page

SLO_MS = 50.0
SCREEN_WIDTH_PX = 1280  # a laptop's window: every table fits without scrolling sideways
A4_LANDSCAPE_WIDTH_PX = 1032  # 297 mm less the page's 12 mm margins, at 96 px per inch


class Page(HTMLParser):
    """What a reader can see and what the page would fetch: tables, headings, images, links, ids."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []  # each table's rows, the header first, as plain text
        self.headings: list[tuple[str, str]] = []  # (tag, text) of h1-h3
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.fetching: list[str] = []  # tags that load or run something: script, link, iframe, ...
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag in ("script", "link", "iframe", "object", "embed", "base"):
            self.fetching.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        if tag in ("th", "td"):
            self._cell = []
        if tag in ("h1", "h2", "h3"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        if tag in ("h1", "h2", "h3"):
            self.headings.append((tag, "".join(self._heading)))
            self._heading = None

    def handle_data(self, data):
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def tune_dir(root: Path, target: str, goodput: float, p99_ms: float, concurrency: int) -> Path:
    """A tune directory as `rayscale tune` leaves it: one candidate's bench results file and tune.json."""
    directory = root / f"tune-{target}"
    label = f"{target} 2/GPU mbs256 wait2ms"
    write_json_atomic(directory / f"{target}-winner.json", bench_result(sweep(target, 1), triton=target == "triton").to_dict())
    best = CandidateSummary(target=target, label=label, settings={"max_batch_size": 256}, results_file=f"{target}-winner.json",
                            reproduce=f"rayscale {'triton up' if target == 'triton' else 'up'} --replicas 1",
                            stop_reason="bracketed", goodput_images_per_s=goodput, slo_load=concurrency,
                            p99_ms=p99_ms, peak_images_per_s=goodput)  # fmt: skip
    write_tune_result(TuneResult(target=target, gpus=1, images_per_request=8, slo_p99_ms=SLO_MS, strategy="grid", space={},
                                 budget_s=600, budget_used_s=420, status="complete", best=best, candidates=[best]),
                      directory)  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A report over rayscale at 1, 2 and 4 GPUs, Triton at the same sizes, and a tune search of each."""
    root = tmp_path_factory.mktemp("results")
    files = [write_json_atomic(root / f"rayscale-{g}gpu.json", bench_result(sweep("rayscale", g)).to_dict()) for g in (1, 2, 4)]
    triton = [p for g in (1, 2, 4) for p in sweep("triton", g)]
    files.append(write_json_atomic(root / "triton.json", bench_result(triton, triton=True).to_dict()))
    files += [tune_dir(root, "rayscale", 1480.0, 41.0, 16), tune_dir(root, "triton", 1650.0, 44.5, 16)]
    config = ReportConfig(costs_usd_per_hour=parse_costs(COSTS), slo_p99_ms=SLO_MS)
    return run_report(files, config, out=tmp_path_factory.mktemp("report") / "h100")


def test_the_page_carries_its_plots_and_fetches_nothing(written):
    page = Page(written.file("report.html").read_text())
    assert page.fetching == []  # no script, style sheet or frame to load: it reads offline, JavaScript off
    plots = [p for p in written.files if p.suffix == ".png"]
    assert len(page.images) == len(plots) >= 4
    for src, plot in zip(page.images, plots, strict=True):
        prefix, _, data = src.partition(",")
        assert prefix == "data:image/png;base64"
        assert base64.b64decode(data) == plot.read_bytes() and plot.read_bytes()[:8] == PNG_SIGNATURE
    assert all(link.startswith("#") and link[1:] in page.ids for link in page.links)  # contents and part links


def test_the_page_shows_every_table_of_the_report_as_report_md_does(written):
    """Both files render one document: the same sections, and every table with every column and figure."""
    page = Page(written.file("report.html").read_text())
    document = report_document(written.report, [p.name for p in written.files if p.suffix == ".png"])
    tables = [b for b in document.blocks if isinstance(b, Table)]
    assert [[[plain_text(c) for c in row] for row in [t.header, *t.rows]] for t in tables] == page.tables
    sections = [plain_text(b.text) for b in document.blocks if isinstance(b, Heading) and b.level == 2]
    assert [text for tag, text in page.headings if tag == "h2"] == ["Contents", *sections]
    for expected in ("Summary", "Side by side", "Peak throughput, scaling and cost", "Best of each under the SLO",
                     "Latency at each load", "Plots", "Setup", "Definitions"):  # fmt: skip
        assert expected in sections
    markdown = written.file("report.md").read_text()
    for table in tables:
        assert "| " + " | ".join(table.header) + " |" in markdown
    tune = next(t for t in page.tables if t[0] == ["", "rayscale", "triton"])  # the winners side by side
    assert ["1,480.0", "1,650.0"] in [row[1:] for row in tune] and ["41.0", "44.5"] in [row[1:] for row in tune]
    assert any(row == ["GPU driver", "550.54.15"] for table in page.tables for row in table)  # the setup


def test_peaks_the_command_prints_are_the_reports_own(written):
    from rayscale.report.sections import peaks_table

    table = peaks_table(written.report)
    assert len(table.rows) == len(written.report.groups) == 6
    for row, group in zip(table.rows, (g for s in written.report.series for g in written.report.groups_of(s)), strict=True):
        assert row[0] == group.series and row[2] == f"{group.peak_images_per_s:,.1f}"


chromium = pytest.mark.skipif(
    chromium_binary() is None, reason="no chromium to render report.html in: apt-get install -y chromium (scripts/test.sh does)"
)


def non_white_share(png: bytes) -> float:
    pixels = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    return float(np.mean(pixels.min(axis=-1) < 0.9))


@chromium
def test_a_browser_shows_the_page_without_an_error_on_screen_and_printed(written):
    url = written.file("report.html").resolve().as_uri()
    screen = load_page(url, width=SCREEN_WIDTH_PX, height=1600)
    assert screen.errors == []
    assert all(r == url or r.startswith("data:image/png") for r in screen.requests)  # nothing fetched from elsewhere
    assert screen.size[0] <= SCREEN_WIDTH_PX  # nothing wider than the window: every table fits
    assert screen.size[1] > 5000  # the whole report laid out, not an empty page
    assert 0.02 < non_white_share(screen.screenshot_png) < 0.6  # text and tables on a white page, not blank

    printed = load_page(url, width=A4_LANDSCAPE_WIDTH_PX, height=1400, media="print", print_pdf=True)
    assert printed.errors == [] and printed.size[0] <= A4_LANDSCAPE_WIDTH_PX
    assert printed.pdf.startswith(b"%PDF") and printed.pdf.count(b"/Type /Page") > 5
