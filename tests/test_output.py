"""What the commands print, read where results are kept: a log file. Every header and figure is whole.

`rayscale bench` (against the trivial server) and `rayscale tune` (the null engine) run with their
output sent to a file, as CI and `> run.log` do; the tables they print are read back from it. The
table printer itself is checked on a terminal too, where it draws boxes and folds what does not fit.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from rayscale.tables import Table, print_table, render_text

from conftest import free_port

ENTRY = "import sys; from rayscale.cli import main; sys.argv[0] = 'rayscale'; main()"
# A label longer than rich gives a column in 80 columns: the kind of header and cell that got cut to "tar…".
LONG_TARGET = "trivial-server-behind-a-long-descriptive-label"
FAST = ["--warmup", "0.2", "--window", "0.3", "--duration", "1.5"]


def cells(line: str) -> list[str]:
    """A plain-text table row split into its cells (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def rows_of(log: str, table: Table) -> list[list[str]]:
    """The rows under the table's header line in ``log``, as cells."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if cells(line) == table.header)
    assert set(lines[start + 1].replace(" ", "")) == {"-"}  # the rule under the header
    return [cells(line) for line in lines[start + 2 : start + 2 + len(table.rows)]]


# ---- the printer ----------------------------------------------------------------------------------------


def wide_table() -> Table:
    table = Table(["configuration", "size", "peak img/s", "p99 ms", "$/1000 img"], title="peak of each configuration")
    table.add_row("rayscale, http via direct, 4 processes/GPU, 32 img/req", "2 GPU(s)", "53,083.3", "65.6", "$2.62e-05")
    table.add_row("triton, http, 4 instances/GPU, 32 img/req", "2 GPU(s)", "31,913.6", "661.5", "$4.35e-05")
    return table


def test_a_table_sent_to_a_file_is_plain_text_at_full_width_with_numbers_right_aligned():
    out = io.StringIO()
    print_table(wide_table(), Console(file=out, width=80))  # a file: rich would fit it to 80 columns
    text = out.getvalue()
    assert text == render_text(wide_table()) + "\n"
    lines = text.splitlines()
    assert lines[0] == "peak of each configuration" and max(len(line) for line in lines) > 80
    assert rows_of(text, wide_table()) == wide_table().rows
    header, rule, first, second = lines[1:5]
    assert header.index("p99 ms") + len("p99 ms") == first.index("65.6") + len("65.6") == second.index("661.5") + len("661.5")
    assert first.index("2 GPU(s)") == second.index("2 GPU(s)") == header.index("size")  # text: left-aligned
    assert "…" not in text and "┃" not in text


def test_a_table_on_a_narrow_terminal_folds_its_text_and_keeps_every_figure_on_one_line():
    out = io.StringIO()
    print_table(wide_table(), Console(file=out, width=60, force_terminal=True, color_system=None))
    text = out.getvalue()
    assert "┃" in text and "…" not in text  # drawn by rich, nothing cut
    for figure in ("53,083.3", "31,913.6", "661.5", "$2.62e-05", "$4.35e-05"):
        assert figure in text
    first_column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert "".join(row[0] for row in wide_table().rows).replace(" ", "") == first_column.replace(" ", "")  # folded, whole


def test_a_row_must_fill_the_header():
    with pytest.raises(ValueError, match="a row of 2 cells in a table of 5 columns"):
        wide_table().add_row("a", "b")


# ---- the commands, output to a file -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster as `rayscale up` starts one, which both commands below join."""
    from rayscale.serve.cluster import connect, down

    saved = {k: os.environ.get(k) for k in ("RAYSCALE_STATE_DIR", "RAYSCALE_RAY_TEMP_DIR", "COLUMNS")}
    os.environ["RAYSCALE_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    os.environ["RAYSCALE_RAY_TEMP_DIR"] = f"/tmp/rso-{os.getpid()}"
    os.environ.pop("COLUMNS", None)  # as in CI: nothing says how wide the log is
    connect(start=True, num_gpus=1, num_cpus=4)
    yield dict(os.environ)
    down(stop_cluster=True)
    shutil.rmtree(os.environ["RAYSCALE_RAY_TEMP_DIR"], ignore_errors=True)
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def rayscale_to_file(log: Path, *args: str, env: dict[str, str]) -> str:
    """Run a command as `rayscale ... > log 2>&1` would, and return the log."""
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", ENTRY, *args], stdout=f, stderr=subprocess.STDOUT, env=env,
                              timeout=300)  # fmt: skip
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


@pytest.mark.timeout(600)
def test_bench_and_tune_logs_hold_whole_tables_and_one_line_per_step(cluster, model_dir, tmp_path):
    from rayscale.cli.tune import candidates_table
    from rayscale.loadgen.progress import bench_table
    from rayscale.loadgen.trivial_server import TrivialServer
    from rayscale.results import load_results
    from rayscale.tune import load_tune_result

    with TrivialServer(delay_s=0.002) as server:
        out = tmp_path / "bench.json"
        log = rayscale_to_file(tmp_path / "bench.log", "bench", "--url", server.url, "--target", LONG_TARGET,
                               "--concurrency", "1,2", "--images-per-request", "4", *FAST, "--max-windows", "3",
                               "--clients", "1", "--client-cpus", "0.25", "--out", str(out), env=cluster)  # fmt: skip
    expected = bench_table(load_results(out))
    assert [row[0] for row in expected.rows] == [LONG_TARGET, LONG_TARGET]
    assert rows_of(log, expected) == expected.rows  # every header and every figure, whole
    finished = [line for line in log.splitlines() if "→" in line]
    assert len(finished) == 2 and all(line.endswith("client actor(s)") for line in finished)  # one line per point
    assert "…" not in log

    tune_dir = tmp_path / "tune"
    log = rayscale_to_file(tmp_path / "tune.log", "tune", "--target", "rayscale", "--gpus", "1", "--slo-p99-ms", "60000",
                           "--images-per-request", "2", "--space", "replicas_per_gpu=1", "--space", "batches_in_flight=2",
                           "--space", "max_batch_size=8", "--space", "batch_wait_ms=1", "--provider", "null",
                           "--model", str(model_dir), "--port", str(free_port()), "--cpus-per-replica", "0.25",
                           "--strategy", "grid", "--concurrency-start", "1", "--max-concurrency", "2", "--warmup", "0.2",
                           "--window", "0.3", "--out", str(tune_dir), env=cluster)  # fmt: skip
    expected = candidates_table(load_tune_result(tune_dir / "tune.json"))
    assert len(expected.rows) == 1 and expected.rows[0][1] != "–"  # the one candidate met the SLO
    assert rows_of(log, expected) == expected.rows
    assert "…" not in log
