"""focusfuse train on a tiny BSDS-shaped folder: runs, resumes, is deterministic, exports weights."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from focusfuse.model.weights import load_model
from focusfuse.training.synthetic import procedural_texture
from focusfuse.training.trainer import TrainConfig, train

# Command-line options of a training run small enough for a test: 2 pairs of 32 px a step on the CPU.
TINY_RUN = ["--batch-size", "2", "--crop", "32", "--validation-pairs", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_bsds(tmp_path_factory):
    root = tmp_path_factory.mktemp("bsds")
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (root / split).mkdir()
        for k in range(2):
            image = (procedural_texture(60, 80, rng) * 255).astype(np.uint8)
            labels = np.ones((60, 80), np.uint8)
            labels[:, 30:] = 2
            labels[40:, 50:] = 3
            cv2.imwrite(str(root / split / f"{k}.jpg"), np.dstack([image] * 3))
            cv2.imwrite(str(root / split / f"{k}_seg.png"), labels)
    return root


def config(data, out, epochs):
    return TrainConfig(
        data_dir=str(data),
        out_dir=str(out),
        epochs=epochs,
        steps_per_epoch=2,
        batch_size=2,
        crop=32,
        validation_pairs=2,
    )


def test_training_runs_resumes_and_is_deterministic(tiny_bsds, tmp_path):
    lines = []
    straight = train(config(tiny_bsds, tmp_path / "a", 2), log=lines.append)
    train(config(tiny_bsds, tmp_path / "b", 1), log=lines.append)
    resumed = train(config(tiny_bsds, tmp_path / "b", 2), log=lines.append)
    assert any(line.startswith("resumed from") for line in lines)
    first, second = load_model(straight), load_model(resumed)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {
        "train_loss",
        "train_dice",
        "train_qg",
        "val_accuracy_textured",
        "val_laplacian_accuracy_textured",
        "val_qg",
    } <= set(log[0])
    metadata = torch.load(straight, weights_only=True)["metadata"]
    assert metadata["config"]["seed"] == 0 and len(metadata["history"]) == 2
    resumed_machine = torch.load(resumed, weights_only=True)["metadata"]["machine"]
    assert resumed_machine.count(", torch ") == 1 and "cpu" in resumed_machine  # resumed here: one machine recorded


def test_resume_refuses_other_settings(tiny_bsds, tmp_path):
    from dataclasses import replace

    from focusfuse.errors import FocusFuseError

    train(config(tiny_bsds, tmp_path / "run", 1), log=lambda line: None)
    with pytest.raises(
        FocusFuseError, match=r"checkpoint.pt: was made with other settings: --crop 40 \(checkpoint: 32\)"
    ):
        train(replace(config(tiny_bsds, tmp_path / "run", 2), crop=40), log=lambda line: None)
    # How long and where it runs may change: more epochs, other workers.
    train(replace(config(tiny_bsds, tmp_path / "run", 2), workers=1), log=lambda line: None)
    assert len(torch.load(tmp_path / "run" / "gacn.pt", weights_only=True)["metadata"]["history"]) == 2


def test_worker_processes_make_the_same_batches(tiny_bsds, tmp_path):
    """Batches made by two spawned workers train exactly the weights made in-process."""
    from dataclasses import replace

    in_process = train(config(tiny_bsds, tmp_path / "serial", 2), log=lambda line: None)
    with_workers = train(replace(config(tiny_bsds, tmp_path / "pool", 2), workers=2), log=lambda line: None)
    expected = load_model(in_process).state_dict()
    for name, tensor in load_model(with_workers).state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert torch.load(with_workers, weights_only=True)["metadata"]["config"]["workers"] == 2
    assert not list((tmp_path / "pool").glob("*.partial"))  # checkpoints are written whole, then renamed


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_training_and_its_workers(tiny_bsds, tmp_path, stop):
    """Ctrl-C reaches the whole process group, SIGTERM (kill) the training process alone;
    either way the run must end, workers and all, with its last checkpoint whole."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "focusfuse",
        "train",
        "--data",
        str(tiny_bsds),
        "--out",
        str(out),
        "--epochs",
        "1000",
    ]
    command += ["--steps-per-epoch", "2", *TINY_RUN, "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").is_file():  # an epoch done: the workers are running
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            time.sleep(0.2)
        if stop == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
        assert process.returncode == (130 if stop == "ctrl-c" else 143), output
        assert "focusfuse: interrupted; the last whole checkpoint is kept" in output
        for _ in range(100):  # no process of the group is left (the last ones may take a moment)
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            left = subprocess.run(
                ["ps", "-o", "pid,args", "-g", str(process.pid)], capture_output=True, text=True
            ).stdout
            raise AssertionError(f"processes left after Ctrl-C:\n{left}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert (out / "checkpoint.pt").is_file() and not list(out.glob("*.partial"))


def test_train_command_line(tiny_bsds, tmp_path):
    from click.testing import CliRunner

    from focusfuse.cli import main

    out = tmp_path / "run"
    arguments = ["train", "--data", str(tiny_bsds), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "1"]
    arguments += [*TINY_RUN, "--qg-weight", "0", "--workers", "1"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "epoch 1/1 loss" in result.stderr and (out / "gacn.pt").is_file() and (out / "gacn.pt.sha256").is_file()
    record = json.loads((out / "log.jsonl").read_text())
    assert "train_qg" not in record  # --qg-weight 0: Dice only
    assert torch.load(out / "gacn.pt", weights_only=True)["metadata"]["config"]["workers"] == 1
    missing = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "none"), "--out", str(out)])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_init_starts_from_given_weights_and_records_them(tiny_bsds, tmp_path):
    from dataclasses import replace

    from focusfuse.model.weights import sha256_of

    start = train(config(tiny_bsds, tmp_path / "start", 1), log=lambda line: None)
    frozen = replace(config(tiny_bsds, tmp_path / "tuned", 1), learning_rate=0.0, init_weights=str(start))
    tuned = train(frozen, log=lambda line: None)
    tuned_parameters = dict(load_model(tuned).named_parameters())
    for name, tensor in load_model(start).named_parameters():
        assert torch.equal(tensor, tuned_parameters[name]), name  # learning rate 0: the starting weights, kept
    metadata = torch.load(tuned, weights_only=True)["metadata"]
    assert metadata["config"]["init_sha256"] == sha256_of(start)
    fresh = train(replace(frozen, out_dir=str(tmp_path / "fresh"), init_weights=None), log=lambda line: None)
    assert not torch.equal(
        load_model(fresh).state_dict()["features.blocks.0.0.weight"],
        load_model(start).state_dict()["features.blocks.0.0.weight"],
    )


def test_score_smoothing_is_trained_with_and_exported(tiny_bsds, tmp_path):
    from dataclasses import replace

    weights = train(replace(config(tiny_bsds, tmp_path / "smoothed", 1), score_sigma=3.0), log=lambda line: None)
    assert load_model(weights).score_sigma == 3.0
    assert torch.load(weights, weights_only=True)["metadata"]["config"]["score_sigma"] == 3.0
