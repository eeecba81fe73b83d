"""``focusfuse batch`` end to end: fused once, skipped when done, due again when a slice changes, safe to overlap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from acquisition import FOLDER_STACKS, TIFF_STACK, age, make_tree, write_folder_stack
from click.testing import CliRunner

import focusfuse.cli as cli
from focusfuse.batch.discovery import discover_stacks
from focusfuse.batch.locking import OutputLock
from focusfuse.batch.runner import BatchSettings, run_batch
from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.model.weights import load_model, save_weights

from conftest import REPO, run_as_nobody

ALL_STACKS = sorted([*FOLDER_STACKS, TIFF_STACK])


def batch(*arguments: str):
    return CliRunner().invoke(cli.main, ["batch", *arguments, "--device", "cpu"])


def read_report(path: Path) -> dict[str, dict]:
    return {row["stack"]: row for row in map(json.loads, path.read_text().splitlines())}


def index_map(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture
def tree(tmp_path) -> Path:
    root = make_tree(tmp_path / "acq")
    age(root)
    return root


def test_fuses_every_stack_then_nothing_then_only_what_changed(tree, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    first = batch(str(tree), "-o", str(out), "--settle", "0", "--jobs", "1", "--report", str(report))
    assert first.exit_code == 0, first.output
    rows = read_report(report)
    assert sorted(rows) == ALL_STACKS and {row["status"] for row in rows.values()} == {"fused"}
    assert rows[TIFF_STACK]["slices"] == 4 and rows["day1/pos1"]["slices"] == 3
    # Each result is what `focusfuse stack` makes of that folder.
    alone = fuse_stack([tree / "day1/pos2"], device="cpu")
    assert np.array_equal(index_map(out / "day1/pos2.index.png"), alone.index_map)
    assert np.array_equal(cv2.imread(str(out / "day1/pos2.png"), cv2.IMREAD_UNCHANGED), alone.fused)
    record = json.loads((out / "day2/sampleA/pos1.timing.json").read_text())
    assert [entry["name"] for entry in record["inputs"]] == ["z0.png", "z1.png", "z2.png"]

    second = batch(str(tree), "-o", str(out), "--settle", "0", "--report", str(report))
    assert second.exit_code == 0 and {row["status"] for row in read_report(report).values()} == {"done"}

    os.utime(tree / "day1/pos1/z1.png")  # a slice written again
    write_folder_stack(tree / "day2/sampleA/pos1", seed=5, n_slices=4)  # and a slice added
    third = batch(str(tree), "-o", str(out), "--settle", "0", "--report", str(report))
    assert third.exit_code == 0
    statuses = {name: row["status"] for name, row in read_report(report).items()}
    assert statuses == {
        "day1/pos1": "fused",
        "day1/pos2": "done",
        "day2/sampleA/pos1": "fused",
        TIFF_STACK: "done",
    }
    assert json.loads((out / "day2/sampleA/pos1.timing.json").read_text())["n_slices"] == 4


def test_other_options_or_weights_make_every_stack_due(tree, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    assert batch(str(tree), "-o", str(out), "--settle", "0", "--pattern", "day1/*").exit_code == 0
    batch(str(tree), "-o", str(out), "--settle", "0", "--pattern", "day1/*", "--composite", "select",
          "--report", str(report))  # fmt: skip
    assert {row["status"] for row in read_report(report).values()} == {"fused"}
    weights = tmp_path / "weights.pt"
    for name in ("gacn.pt", "gacn.pt.sha256"):
        (tmp_path / name.replace("gacn", "weights")).write_bytes((REPO / "weights" / name).read_bytes())
    again = ["--pattern", "day1/*", "--composite", "select", "--weights", str(weights), "--report", str(report)]
    # The same weights under another name are the same weights: nothing to do.
    assert batch(str(tree), "-o", str(out), "--settle", "0", *again).exit_code == 0
    assert {row["status"] for row in read_report(report).values()} == {"done"}
    save_weights(load_model(weights), weights, {"note": "trained again"})  # other weights: fused again
    assert batch(str(tree), "-o", str(out), "--settle", "0", *again).exit_code == 0
    assert {row["status"] for row in read_report(report).values()} == {"fused"}


def test_a_stack_still_being_written_waits_for_the_next_run(tmp_path):
    root = make_tree(tmp_path / "acq")
    time.sleep(1.6)
    write_folder_stack(root / "day1/pos2", seed=4, n_slices=4)  # the acquisition is still going
    report = tmp_path / "report.jsonl"
    result = batch(str(root), "-o", str(tmp_path / "out"), "--settle", "1.5", "--report", str(report))
    assert result.exit_code == 0
    rows = read_report(report)
    assert rows["day1/pos2"]["status"] == "settling" and "--settle 1.5" in rows["day1/pos2"]["detail"]
    assert not (tmp_path / "out/day1/pos2.png").exists()
    assert {rows[name]["status"] for name in ALL_STACKS if name != "day1/pos2"} == {"fused"}


def test_a_broken_stack_fails_once_and_the_rest_is_fused(tree, tmp_path, monkeypatch):
    broken = tree / "day1/pos2/z1.png"
    whole = broken.read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    age(tree)
    out, report = tmp_path / "out", tmp_path / "report.csv"
    monkeypatch.setattr(cli, "has_controlling_terminal", lambda: True)  # a script's log: a summary line
    first = batch(str(tree), "-o", str(out), "--settle", "0", "--report", str(report))
    assert first.exit_code == cli.EXIT_SOME_FAILED
    lines = first.stderr.splitlines()
    assert (
        lines[0]
        == f"focusfuse: error: {broken}: truncated PNG (its chunks end before the IEND chunk; the file was cut short)"
    )
    assert lines[1].startswith("batch: 3 fused, 0 done before, 0 settling, 1 failed in ")
    assert report.read_text().splitlines()[0] == "stack,source,status,slices,seconds,finished_at,fused,error,detail"
    assert not (out / "day1/pos2.png").exists() and (out / "day1/pos2.failed.json").is_file()
    # Cron comes back: the same broken files are not tried (nor reported) again.
    again = batch(str(tree), "-o", str(out), "--settle", "0")
    assert again.exit_code == 0 and again.stderr.splitlines()[0].startswith(
        "batch: 0 fused, 3 done before, 0 settling, 0 failed, 1 failed before in "
    )
    assert batch(str(tree), "-o", str(out), "--settle", "0", "--retry-failed").exit_code == cli.EXIT_SOME_FAILED
    broken.write_bytes(whole)  # the slice copied again: due again
    repaired = batch(str(tree), "-o", str(out), "--settle", "0")
    assert repaired.exit_code == 0 and (out / "day1/pos2.png").is_file()
    assert not (out / "day1/pos2.failed.json").exists()


def test_dry_run_lists_and_writes_nothing(tree, tmp_path):
    out = tmp_path / "out"
    result = batch(str(tree), "-o", str(out), "--settle", "0", "--dry-run")
    assert result.exit_code == 0 and not out.exists()
    lines = result.stdout.splitlines()
    assert lines[0] == f"due            day1/pos1  (3 slices)  -> {out}/day1/pos1.png"
    assert lines[-1] == "not a stack    day2/lonely  1 image, fewer than --min-slices 2"
    settling = batch(str(tree), "-o", str(out), "--dry-run")  # ctimes are new: nothing has settled for 60 s
    assert all(line.startswith(("settling", "not a stack")) for line in settling.stdout.splitlines())


def test_a_stack_locked_by_another_run_is_left_to_it_and_a_dead_runs_lock_is_taken_over(tree, tmp_path):
    out = tmp_path / "out"
    (out / "day1").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from focusfuse.batch.locking import OutputLock; "
         "OutputLock(__import__('pathlib').Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(600)",
         str(out / "day1/.pos1.lock")],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        report = tmp_path / "report.jsonl"
        result = batch(str(tree), "-o", str(out), "--settle", "0", "--pattern", "day1/*", "--report", str(report))
        assert result.exit_code == 0
        rows = read_report(report)
        assert rows["day1/pos1"]["status"] == "busy" and rows["day1/pos2"]["status"] == "fused"
    finally:
        holder.send_signal(signal.SIGKILL)  # killed, as cron's run may be: no chance to clean up
        holder.wait()
    assert (out / "day1/.pos1.lock").exists()
    result = batch(str(tree), "-o", str(out), "--settle", "0", "--pattern", "day1/*", "--report", str(report))
    assert read_report(report)["day1/pos1"]["status"] == "fused"
    assert not (out / "day1/.pos1.lock").exists()


def test_a_lock_removed_by_its_holder_while_we_waited_is_not_held_twice(tmp_path):
    path = tmp_path / ".stack.lock"
    first = OutputLock(path)
    assert first.acquire()
    assert not OutputLock(path).acquire()
    first.release()
    second, third = OutputLock(path), OutputLock(path)
    assert second.acquire() and not third.acquire()
    second.release()


def test_two_batches_started_together_fuse_each_stack_exactly_once(tmp_path):
    root = tmp_path / "acq"
    names = [f"pos{number}" for number in range(8)]
    for seed, name in enumerate(names):
        write_folder_stack(root / name, seed)
    age(root)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "focusfuse", "batch", str(root), "-o", str(out), "--settle", "0",
               "--jobs", "1", "--device", "cpu", "--report"]  # fmt: skip
    runs = [
        subprocess.Popen(
            [*command, str(tmp_path / f"run{n}.jsonl")],
            cwd="/",  # as cron: no working directory to lean on, no terminal
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    printed = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0] and printed == [("", "")] * 2  # cron mails nothing
    reports = [read_report(tmp_path / f"run{n}.jsonl") for n in range(2)]
    for name in names:
        statuses = sorted(report[name]["status"] for report in reports)
        assert statuses.count("fused") == 1, (name, statuses)
        assert set(statuses) <= {"fused", "done", "busy"}
    assert not list(out.glob(".*.lock")) and not list(out.glob(".*.png"))


def test_sigterm_stops_the_workers_and_leaves_whole_results_only(tmp_path):
    root = tmp_path / "acq"
    for seed in range(8):
        write_folder_stack(root / f"pos{seed}", seed, size=320)
    age(root)
    out = tmp_path / "out"
    marker = f"batch-sigterm-{os.getpid()}-{time.time_ns()}"  # inherited by the workers: finds them in /proc
    run = subprocess.Popen(
        [sys.executable, "-m", "focusfuse", "batch", str(root), "-o", str(out), "--settle", "0", "--jobs", "2",
         "--device", "cpu"],
        cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "FOCUSFUSE_TEST_RUN": marker},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(out.glob("*.timing.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == cli.EXIT_TERMINATED
    assert stderr.strip() == "focusfuse: interrupted; the stacks fused so far are kept"
    finished = {path.name.removesuffix(".timing.json") for path in out.glob("*.timing.json")}
    assert 1 <= len(finished) < 8
    assert {path.name for path in out.iterdir()} == {
        f"{name}{suffix}" for name in finished for suffix in (".png", ".index.png", ".timing.json")
    }  # no lock, no temporary file, no half-written image
    assert processes_with(marker) == []


def processes_with(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (a batch and its workers)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_worker_processes_and_a_dask_cluster_give_the_same_results(tree, tmp_path):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (focusfuse[dask])")
    jobs_here = discover_stacks([tree], tmp_path / "local").jobs
    settings = BatchSettings(device="cpu", settle_s=0)
    local = run_batch(jobs_here, settings, workers=2)
    assert [outcome.status for outcome in local] == ["fused"] * len(ALL_STACKS)
    assert [outcome.status for outcome in run_batch(jobs_here, settings, workers=2)] == ["done"] * len(ALL_STACKS)
    jobs_there = discover_stacks([tree], tmp_path / "dask").jobs
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        on_cluster = run_batch(jobs_there, settings, scheduler=client)
        assert [outcome.status for outcome in on_cluster] == ["fused"] * len(ALL_STACKS)
        assert [o.status for o in run_batch(jobs_there, settings, scheduler=cluster.scheduler_address)] == [
            "done"
        ] * len(ALL_STACKS)
    for here, there in zip(jobs_here, jobs_there, strict=True):
        assert np.array_equal(index_map(here.index_map), index_map(there.index_map)), here.name
        assert np.array_equal(index_map(here.fused), index_map(there.fused)), here.name


def test_the_model_is_loaded_once_per_process(tree):
    first = fuse_stack([tree / "day1/pos1"], device="cpu")
    second = fuse_stack([tree / "day1/pos2"], device="cpu")
    assert first.timing["weights_sha256"] == second.timing["weights_sha256"]
    assert second.timing["stages_s"]["load_weights"] < 0.01


def test_a_terminal_gets_a_bar_over_the_stacks_error_lines_and_the_summary(tree, tmp_path, monkeypatch):
    (tree / "day1/pos1/z2.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # cut short after the signature
    age(tree)
    monkeypatch.setattr(cli, "output_mode", lambda quiet: "progress")
    result = batch(str(tree), "-o", str(tmp_path / "out"), "--settle", "0", "--pattern", "day1/*", "--jobs", "1")
    assert result.exit_code == cli.EXIT_SOME_FAILED
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any(line.startswith(f"focusfuse: error: {tree / 'day1/pos1/z2.png'}: ") for line in lines)
    assert lines[-1].startswith("batch: 1 fused, 0 done before, 0 settling, 1 failed in ")


def test_an_output_root_this_user_cannot_write_is_one_error_line(shared_tmp):
    root = shared_tmp / "acq"
    write_folder_stack(root / "pos1", seed=0)
    out = shared_tmp / "fused"
    out.mkdir(mode=0o755)  # root's, and not writable by anyone else
    arguments = ["-m", "focusfuse", "batch", str(root), "-o", str(out), "--settle", "0", "--device", "cpu"]
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        out.chmod(0o555)
        completed = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, cwd=REPO)
    else:
        completed = run_as_nobody(arguments, cwd="/tmp")
    assert completed.returncode == 1
    assert completed.stderr.strip() == f"focusfuse: error: {out}: is not writable (permission denied)"


def test_a_worker_with_other_weights_than_the_batch_refuses_to_fuse(tree, tmp_path):
    from focusfuse.batch.runner import process_stack

    job = discover_stacks([tree], tmp_path / "out", pattern="day1/pos1").jobs[0]
    outcome = process_stack(job, BatchSettings(device="cpu", settle_s=0), "0" * 64)
    assert outcome.status == "failed" and "this worker's weights differ from the batch's" in outcome.error
    assert not job.fused.exists()


def test_a_worker_stopped_while_waiting_for_its_next_stack_exits_without_a_traceback(capfd):
    """Regression: SIGTERM to an idle worker printed a KeyboardInterrupt traceback under the one error line."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from focusfuse.batch.runner import _start_worker

    pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(1,))
    try:
        worker = pool.submit(os.getpid).result(timeout=120)
        os.kill(worker, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
            try:
                os.waitpid(worker, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    assert capfd.readouterr().err == ""
