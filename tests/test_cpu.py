"""Host CPU per image: the /proc reader against processes that burn a known amount of CPU, and the
figures a point records from it, through a results file and into the report."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from rayscale.metrics.cpu import CLOCK_TICKS_PER_S, process_cpu, process_tree_cpu_s
from rayscale.results import BenchResult, HostCpu, PointResult, load_results, write_json_atomic

# A parent that, on "go", starts a child that burns LIVE_S and stays alive, runs one that burns
# REAPED_S and exits (waited for, so it is gone before the reading), then burns THREAD_S in each of
# two threads at once, and prints what the three processes say they spent (each its own
# process_time, which counts every thread of it): their sum is what the tree burned.
BURNER = textwrap.dedent(
    """
    import subprocess, sys, threading, time

    live_s, reaped_s, thread_s = map(float, sys.argv[1:])

    def child(seconds, stay):
        code = (f"import sys, time\\nt = time.process_time()\\nwhile time.process_time() - t < {seconds}: pass\\n"
                "print(time.process_time(), flush=True)\\n" + ("sys.stdin.readline()" if stay else ""))
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def burn(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    print("ready", flush=True)
    sys.stdin.readline()
    start = time.process_time()
    live = child(live_s, stay=True)
    reaped = child(reaped_s, stay=False)
    reaped_burned = float(reaped.communicate()[0])
    threads = [threading.Thread(target=burn, args=(thread_s,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live_burned = float(live.stdout.readline())
    print(live_burned + reaped_burned + time.process_time() - start, flush=True)
    sys.stdin.readline()
    live.communicate("\\n")
    """
)
LIVE_S, REAPED_S, THREAD_S = 0.3, 0.3, 0.2
TICK_S = 1 / CLOCK_TICKS_PER_S


def test_process_tree_cpu_matches_what_a_busy_tree_burned_in_threads_and_a_reaped_child():
    argv = [sys.executable, "-c", BURNER, *(str(s) for s in (LIVE_S, REAPED_S, THREAD_S))]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        before = process_tree_cpu_s(proc.pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        burned_s = float(proc.stdout.readline())
        after = process_tree_cpu_s(proc.pid)
        assert burned_s >= LIVE_S + REAPED_S + 2 * THREAD_S  # what the processes themselves counted
        # Each process is read to the tick (truncated), plus the interpreters' own work after they printed.
        assert after - before == pytest.approx(burned_s, abs=6 * TICK_S + 0.03)
        # Idle, the tree costs next to nothing.
        time.sleep(0.5)
        assert process_tree_cpu_s(proc.pid) - after <= 2 * TICK_S
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=30)
    assert process_tree_cpu_s(proc.pid) is None and process_cpu(proc.pid) is None


def test_host_cpu_turns_cpu_seconds_into_per_image_and_cores_and_round_trips_a_results_file(tmp_path):
    cpu = HostCpu(measured_s=15.0, images=30_000, client_cpu_s=6.0, replica_cpu_s=24.0, ingress_cpu_s=None)
    assert cpu.server_cpu_s == 24.0 and cpu.server_parts == ["replicas"]
    assert cpu.server_cpu_s_per_1000_images == pytest.approx(0.8)
    assert cpu.client_cpu_s_per_1000_images == pytest.approx(0.2)
    assert cpu.server_cores == pytest.approx(1.6)
    assert HostCpu(measured_s=15.0, images=0, replica_cpu_s=1.0).server_cpu_s_per_1000_images is None
    assert HostCpu(measured_s=15.0, images=10).server_cpu_s is None  # nothing measured is not 0

    point = PointResult(target="rayscale", transport="http-binary", mode="closed", replicas=2, images_per_request=32,
                        concurrency=8, measured_s=15.0, images_per_s=2000.0, host_cpu=cpu)  # fmt: skip
    result = BenchResult(command="rayscale bench", config={}, environment={}, model={}, points=[point])
    path = write_json_atomic(tmp_path / "r.json", result.to_dict())
    stored = json.loads(path.read_text())["points"][0]["host_cpu"]
    assert stored["ingress_cpu_s"] is None and stored["server_cpu_s_per_1000_images"] == pytest.approx(0.8)
    assert load_results(path).points[0].host_cpu == cpu
    # Derived figures are derived again from the parts, never trusted from the file.
    stored["server_cores"] = 99.0
    tampered = json.loads(path.read_text())
    tampered["points"][0]["host_cpu"] = stored
    assert load_results(write_json_atomic(tmp_path / "t.json", tampered)).points[0].host_cpu.server_cores == pytest.approx(1.6)
    # A file written before host CPU was measured still loads, without it.
    old = json.loads(path.read_text())
    del old["points"][0]["host_cpu"]
    assert load_results(write_json_atomic(tmp_path / "old.json", old)).points[0].host_cpu is None
