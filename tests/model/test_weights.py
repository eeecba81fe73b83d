"""Weights are found in a fixed order, checked, and never looked up in the working directory."""

from __future__ import annotations

import pytest
import torch

from focusfuse.errors import FocusFuseError
from focusfuse.model.network import GACN
from focusfuse.model.weights import ENV_VARIABLE, find_weights, load_model, save_weights, shipped_weights_candidates

from conftest import REPO


def test_explicit_path_then_environment_then_shipped(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "explicit.pt", tmp_path / "env.pt"
    save_weights(GACN(), explicit, {})
    save_weights(GACN(), from_env, {})
    monkeypatch.setenv(ENV_VARIABLE, str(from_env))
    assert find_weights(explicit) == explicit
    assert find_weights() == from_env
    monkeypatch.delenv(ENV_VARIABLE)
    assert find_weights() in shipped_weights_candidates()


def test_working_directory_is_never_searched(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VARIABLE, raising=False)
    decoy = tmp_path / "weights" / "gacn.pt"
    decoy.parent.mkdir()
    decoy.write_bytes(b"decoy")
    monkeypatch.chdir(tmp_path)
    assert find_weights().resolve() != decoy.resolve()


def test_shipped_weights_load_in_eval_mode_and_match_their_checksum():
    model = load_model(find_weights())
    assert not model.training
    assert model.parameter_count == GACN().parameter_count


def test_a_changed_file_fails_its_checksum(tmp_path):
    path = tmp_path / "w.pt"
    save_weights(GACN(), path, {"note": "test"})
    with open(path, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(FocusFuseError, match=r"w\.pt: sha256 .* does not match w\.pt\.sha256"):
        load_model(path)


def test_missing_checksum_is_an_error(tmp_path):
    path = tmp_path / "w.pt"
    save_weights(GACN(), path, {})
    (tmp_path / "w.pt.sha256").unlink()
    with pytest.raises(FocusFuseError, match="no checksum file"):
        load_model(path)


def test_saved_weights_round_trip(tmp_path):
    model = GACN()
    torch.nn.init.constant_(model.decision.blocks[0][0].weight, 0.25)
    path = tmp_path / "w.pt"
    save_weights(model, path, {"epochs": 1})
    loaded = load_model(path)
    assert torch.equal(loaded.decision.blocks[0][0].weight, model.decision.blocks[0][0].weight)


def test_score_smoothing_travels_with_the_weights(tmp_path):
    smoothed, plain = tmp_path / "smoothed.pt", tmp_path / "plain.pt"
    save_weights(GACN(score_sigma=4.0), smoothed, {})
    assert load_model(smoothed).score_sigma == 4.0
    # A file written before the option existed has no score_sigma: the paper's network.
    payload = {"state_dict": GACN().state_dict(), "metadata": {"epochs": 1}}
    torch.save(payload, plain)
    from focusfuse.model.weights import checksum_path, sha256_of

    checksum_path(plain).write_text(f"{sha256_of(plain)}  plain.pt\n")
    assert load_model(plain).score_sigma == 0.0


EXPERIMENTS = REPO / "weights" / "experiments"


@pytest.mark.parametrize(("name", "score_sigma"), [("v6-sigma8.pt", 8.0), ("gpu-ours-e13.pt", 4.0)])
def test_kept_experiment_weights_load_with_their_checksum_and_pooling_width(name, score_sigma):
    # weights/experiments/ holds runs that were not shipped (docs/training.md); they
    # must stay loadable as starting points, with the architecture they were trained with.
    path = EXPERIMENTS / name
    model = load_model(path)
    assert model.score_sigma == score_sigma
    assert find_weights() != path


def test_kept_gpu_checkpoint_resumes_the_paper_schedule():
    """The 13-epoch GPU checkpoint holds what `focusfuse train` needs to go on to epoch 50."""
    checkpoint = torch.load(EXPERIMENTS / "gpu-ours-e13-checkpoint.pt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 13 and len(checkpoint["history"]) == 13
    assert checkpoint["config"]["epochs"] == 50 and checkpoint["config"]["steps_per_epoch"] == 250
    assert checkpoint["config"]["score_sigma"] == 4.0 and checkpoint["config"]["qg_weight"] == 3.0
    assert "NVIDIA H200" in checkpoint["machines"][0]
    assert {"model", "optimizer", "scheduler", "torch_rng"} <= set(checkpoint)
    # The settings of weights/train-gpu.sh's `ours` run resume it (others are refused).
    from focusfuse.training.trainer import TrainConfig, check_same_run

    ours = TrainConfig(
        data_dir=".data/bsds500",
        out_dir="/tmp/gpu/ours",
        epochs=50,
        steps_per_epoch=250,
        crop=156,
        learning_rate=1e-4,
        qg_weight=3.0,
        score_sigma=4.0,
        device="cuda",
        workers=14,
    )
    check_same_run(ours, checkpoint["config"], EXPERIMENTS / "gpu-ours-e13-checkpoint.pt")
