"""End-to-end training of GACN on synthetic multi-focus pairs (Dice + lambda (1 - Qg)).

Every batch is generated from the step number and the seed, so a run is
deterministic and resumes exactly from its last checkpoint, and worker processes
(``workers``) that make batches ahead of the network change the speed, not the
batches. Each epoch ends with a validation on held-out pairs made from the BSDS500
*test* images: pixel accuracy of the initial decision map on textured pixels,
against a Laplacian-energy max-select.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import queue as queue_module
import signal
import time
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from focusfuse.errors import FocusFuseError
from focusfuse.interruption import critical_section
from focusfuse.io.color import to_gray
from focusfuse.model.network import GACN
from focusfuse.model.weights import load_model, save_weights, sha256_of
from focusfuse.training.baselines import laplacian_select_pair
from focusfuse.training.losses import gacn_loss, qg_index
from focusfuse.training.synthetic import TRAIN_SIZE, PairSettings, TrainingPair, make_training_pair, texture_mask

# Held-out pairs: aligned (a shift would make the truth, aligned to A, wrong for B near
# every border), no rotation, realistic noise; blur, defocus spread and jitter as in training.
WORKER_CHECK_S = 1.0  # how often a training process waiting for a batch looks whether its workers still live
VALIDATION_SETTINGS = PairSettings(crop=TRAIN_SIZE - 16, rotate=False, noise_max=0.02, max_shift=0)


@dataclass
class TrainConfig:
    """A training run; stored in its checkpoint and in the exported weights."""

    data_dir: str
    out_dir: str
    epochs: int = 12
    steps_per_epoch: int = 125
    batch_size: int = 16
    crop: int = 96
    learning_rate: float = 1e-3
    lr_decay: float = 0.8
    decay_every: int = 2
    qg_weight: float = 1.0
    score_sigma: float = 0.0  # Gaussian pooling of the score z before the sigmoid (network.GACN); 0 = the paper's
    seed: int = 0
    device: str = "cpu"
    validation_pairs: int = 48
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    init_weights: str | None = None  # start from these weights (fine-tuning) instead of PyTorch's initialisation
    init_sha256: str | None = None  # checksum of init_weights, recorded with the run
    workers: int = 0  # processes making batches ahead of the network (0 = in the training process)


Image = tuple[np.ndarray, np.ndarray]  # (gray float32, labels) at TRAIN_SIZE square


def load_split(data_dir: Path, split: str) -> list[Image]:
    """Gray images and label maps of one BSDS500 split, resized to TRAIN_SIZE square."""
    folder = data_dir / split
    images = []
    for image_path in sorted(folder.glob("*.jpg")):
        label_path = image_path.with_name(image_path.stem + "_seg.png")
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        if bgr is None or labels is None:
            raise FocusFuseError(f"{image_path}: cannot read the image or its _seg.png label map")
        gray = to_gray(np.ascontiguousarray(bgr[:, :, ::-1]))
        gray = cv2.resize(gray, (TRAIN_SIZE, TRAIN_SIZE), interpolation=cv2.INTER_AREA)
        labels = cv2.resize(labels, (TRAIN_SIZE, TRAIN_SIZE), interpolation=cv2.INTER_NEAREST)
        images.append((gray, labels))
    if not images:
        raise FocusFuseError(f"{folder}: no .jpg images with _seg.png label maps")
    return images


def training_images(config: TrainConfig) -> list[Image]:
    """The images a run's training pairs are made from: ``config.splits`` of ``config.data_dir``."""
    data_dir = Path(config.data_dir)
    return [image for split in config.splits for image in load_split(data_dir, split)]


def make_batch(
    images: list[Image], rng: np.random.Generator, batch_size: int, settings: PairSettings
) -> list[TrainingPair]:
    picks = rng.integers(0, len(images), size=batch_size)
    return [make_training_pair(*images[int(i)], rng, settings) for i in picks]


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # A, B, truth: float32 (B, 1, H, W)


def stack_pairs(pairs: list[TrainingPair]) -> Batch:
    """Pairs stacked into ``(B, 1, H, W)`` arrays: A, B, truth."""
    stack = lambda name: np.stack([getattr(p, name) for p in pairs])[:, None]  # noqa: E731
    return stack("source_a"), stack("source_b"), stack("truth")


def step_batch(images: list[Image], config: TrainConfig, step: int) -> Batch:
    """The batch of one global step: a function of the seed and the step alone."""
    rng = np.random.default_rng([config.seed, step])
    return stack_pairs(make_batch(images, rng, config.batch_size, PairSettings(crop=config.crop)))


def _batch_worker(config: TrainConfig, steps, batches) -> None:
    """A worker process: the batch of every step it is given, until it is killed.

    Ctrl-C reaches the whole process group; the training process alone handles it
    and kills its workers, so here it is ignored (and was blocked from the start,
    see ``training_batches``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    cv2.setNumThreads(1)  # one core per worker; the workers are the parallelism
    torch.set_num_threads(1)
    images = training_images(config)
    while True:
        step = steps.get()
        try:
            batches.put((step, step_batch(images, config, step), None))
        except Exception as error:  # the training process raises it as its own
            batches.put((step, None, f"{type(error).__name__}: {error}"))


def training_batches(
    images: list[Image], config: TrainConfig, first_step: int, last_step: int
) -> Generator[Batch, None, None]:
    """Batches of steps first_step..last_step-1 in order, made by ``config.workers`` processes.

    The workers run ahead by at most two batches each, so memory stays bounded when
    the network is slower than the data. Spawned (not forked) so that a parent that
    already holds a CUDA context or threads is safe.
    """
    if config.workers <= 0 or first_step >= last_step:
        for step in range(first_step, last_step):
            yield step_batch(images, config, step)
        return
    context = multiprocessing.get_context("spawn")
    steps, batches = context.Queue(), context.Queue()
    workers = [
        context.Process(target=_batch_worker, args=(config, steps, batches), daemon=True, name=f"batches-{number}")
        for number in range(config.workers)
    ]
    # Started with SIGINT blocked, so that a Ctrl-C to the process group while a worker
    # is still starting cannot kill it halfway; here the signal waits until they run.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for worker in workers:
            worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        ready: dict[int, Batch] = {}
        next_step = first_step
        for step in range(first_step, last_step):
            while next_step < last_step and next_step < step + 2 * config.workers:
                steps.put(next_step)
                next_step += 1
            while step not in ready:
                ready.update(_next_batch(batches, workers))
            yield ready.pop(step)
    finally:
        # Killed, not asked to finish: a stop (Ctrl-C, SIGTERM) ends the run at once,
        # whatever the workers were doing; they hold nothing worth keeping.
        with critical_section():
            for worker in workers:
                worker.kill()
            for worker in workers:
                worker.join()
            for queue in (steps, batches):
                queue.cancel_join_thread()
                queue.close()


def _next_batch(batches, workers: list) -> dict[int, Batch]:
    """The next finished batch, as {step: batch}; a worker that died or failed is an error here."""
    try:
        step, batch, problem = batches.get(timeout=WORKER_CHECK_S)
    except queue_module.Empty:
        dead = [worker for worker in workers if not worker.is_alive()]
        if dead:
            raise RuntimeError(f"a batch worker died (exit code {dead[0].exitcode})") from None
        return {}
    if problem is not None:
        raise RuntimeError(f"a batch worker failed on step {step}: {problem}")
    return {step: batch}


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on ``device``; to a GPU through pinned memory, so the copy does not wait for the GPU."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def describe_machine(device: torch.device) -> str:
    """Processor, threads and device (with the GPU's name) for the run's record."""
    where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    processor = platform.processor()  # often empty, or the machine's name again
    chip = platform.machine() if processor in ("", platform.machine()) else f"{platform.machine()} {processor}"
    return f"{chip} {os.cpu_count()} cores, {torch.get_num_threads()} threads, {where}"


def validation_set(images: list[Image], seed: int, count: int) -> list[TrainingPair]:
    """Fixed held-out pairs (same seed -> same pairs), one per image, cycling if needed."""
    rng = np.random.default_rng([seed, 7919])
    return [make_training_pair(*images[i % len(images)], rng, VALIDATION_SETTINGS) for i in range(count)]


BORDER_MARGIN = 8  # pixels; "interior" accuracy leaves out this band along truth borders


def distance_to_border(truth: np.ndarray) -> np.ndarray:
    """Distance in pixels from each pixel to the nearest border of the truth mask."""
    border = cv2.morphologyEx((truth >= 0.5).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    return cv2.distanceTransform((1 - border).astype(np.uint8), cv2.DIST_L2, 3)


@torch.no_grad()
def evaluate_pairs(model: GACN, pairs: list[TrainingPair], device: torch.device) -> dict[str, float]:
    """Accuracy of the initial DM on textured pixels (all, and away from borders), Qg, and the baseline."""
    model.eval()
    correct = total = correct_all = pixels = baseline_correct = 0
    interior_correct = interior_total = 0
    qg_values = []
    for pair in pairs:
        a, b, truth = (to_device(array, device) for array in stack_pairs([pair]))
        decision, fused = model(a, b)
        chosen = (decision.initial_map[0, 0] >= 0.5).cpu().numpy()
        target = pair.truth >= 0.5
        textured = texture_mask(pair.sharp)
        baseline = laplacian_select_pair(pair.source_a, pair.source_b) >= 0.5
        correct += int(((chosen == target) & textured).sum())
        baseline_correct += int(((baseline == target) & textured).sum())
        total += int(textured.sum())
        interior = textured & (distance_to_border(pair.truth) >= BORDER_MARGIN)
        interior_correct += int(((chosen == target) & interior).sum())
        interior_total += int(interior.sum())
        correct_all += int((chosen == target).sum())
        pixels += target.size
        qg_values.append(float(qg_index(a, b, fused)[0]))
    return {
        "accuracy_textured": correct / max(total, 1),
        "accuracy_textured_interior": interior_correct / max(interior_total, 1),
        "accuracy_all": correct_all / max(pixels, 1),
        "laplacian_accuracy_textured": baseline_correct / max(total, 1),
        "qg": float(np.mean(qg_values)),
    }


GRADIENT_CLIP = 5.0  # max global gradient norm


def training_step(
    model: GACN,
    optimizer: torch.optim.Optimizer,
    a: torch.Tensor,
    b: torch.Tensor,
    truth: torch.Tensor,
    qg_weight: float,
) -> dict[str, torch.Tensor]:
    """One optimisation step on a batch; returns the loss parts (detached, on the device)."""
    decision, fused = model(a, b)
    loss, parts = gacn_loss(decision.initial_map, truth, a, b, fused, qg_weight=qg_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRADIENT_CLIP)
    optimizer.step()
    return parts


# What a resumed run may change: how long, where and how fast it runs. Everything else
# defines the batches or the optimisation, so a change would splice two runs together.
RESUMABLE_CHANGES = {"epochs", "device", "workers", "out_dir", "data_dir", "init_weights", "init_sha256"}


def check_same_run(config: TrainConfig, recorded: dict, checkpoint_path: Path) -> None:
    """Refuse to resume a checkpoint under settings that would make it another run."""
    current = asdict(config)
    changed = [
        name for name, value in recorded.items() if name not in RESUMABLE_CHANGES and current.get(name, value) != value
    ]
    if changed:
        differences = ", ".join(
            f"--{name.replace('_', '-')} {current[name]} (checkpoint: {recorded[name]})" for name in changed
        )
        raise FocusFuseError(
            f"{checkpoint_path}: was made with other settings: {differences}; use them, or --no-resume to start over"
        )


def save_checkpoint(state: dict, path: Path) -> None:
    """Write through a temporary file: a run stopped mid-write keeps its last good checkpoint."""
    temporary = path.with_name(path.name + ".partial")
    try:
        torch.save(state, temporary)
    except BaseException:  # Ctrl-C mid-write included: leave no half file behind
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def train(config: TrainConfig, log: Callable[[str], None] = print, resume: bool = True) -> Path:
    """Run (or resume) training; returns the path of the exported weights.

    Files in ``out_dir``: checkpoint.pt (after every epoch), log.jsonl (one record an
    epoch), gacn.pt + gacn.pt.sha256 (the final weights with their record).
    """
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    data_dir = Path(config.data_dir)
    train_images = training_images(config)  # also checks the data before any worker starts
    validation = validation_set(load_split(data_dir, "test"), config.seed, config.validation_pairs)

    model = GACN(score_sigma=config.score_sigma).to(device)
    if config.init_weights:
        # Fine-tuning: the run's record names the starting weights by checksum; the
        # score smoothing is this run's, whatever the starting weights used.
        model.load_state_dict(load_model(Path(config.init_weights)).state_dict())
        config = replace(config, init_sha256=sha256_of(Path(config.init_weights)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.decay_every, gamma=config.lr_decay)
    checkpoint_path = out_dir / "checkpoint.pt"
    start_epoch, elapsed, history = 0, 0.0, []
    machines: list[str] = []  # where the epochs ran: a resumed run may span machines
    here = f"{describe_machine(device)}, torch {torch.__version__}"
    if resume and checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
        check_same_run(config, checkpoint["config"], checkpoint_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["torch_rng"].cpu())  # map_location moved it to the training device
        start_epoch, elapsed, history = checkpoint["epoch"], checkpoint["elapsed"], checkpoint["history"]
        machines = checkpoint.get("machines", [])
        log(f"resumed from {checkpoint_path} at epoch {start_epoch}")

    steps = (start_epoch * config.steps_per_epoch, config.epochs * config.steps_per_epoch)
    with closing(training_batches(train_images, config, *steps)) as batches:  # closing stops the workers
        for epoch in range(start_epoch, config.epochs):
            model.train()
            started = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            for _ in range(config.steps_per_epoch):
                a, b, truth = (to_device(array, device) for array in next(batches))
                parts = training_step(model, optimizer, a, b, truth, config.qg_weight)
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value.double()
            scheduler.step()
            if here not in machines:
                machines.append(here)
            metrics = evaluate_pairs(model, validation, device)
            elapsed += time.perf_counter() - started
            record = {
                "epoch": epoch + 1,
                "steps": (epoch + 1) * config.steps_per_epoch,
                "lr": optimizer.param_groups[0]["lr"],
                **{f"train_{k}": float(v) / config.steps_per_epoch for k, v in sums.items()},
                **{f"val_{k}": v for k, v in metrics.items()},
                "elapsed_s": round(elapsed, 1),
            }
            history.append(record)
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch + 1,
                    "elapsed": elapsed,
                    "history": history,
                    "machines": machines,
                    "config": asdict(config),
                },
                checkpoint_path,
            )
            # After the checkpoint: a logged epoch is always one a resumed run starts after.
            with open(out_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            log(
                f"epoch {epoch + 1}/{config.epochs} loss {record['train_loss']:.4f} dice {record['train_dice']:.4f}"
                + (f" qg {record['train_qg']:.4f}" if "train_qg" in record else "")
                + f" | val acc(textured) {metrics['accuracy_textured']:.4f}"
                + f" laplacian {metrics['laplacian_accuracy_textured']:.4f}"
                f" qg {metrics['qg']:.4f} | {elapsed:.0f} s"
            )

    weights_path = out_dir / "gacn.pt"
    metadata = {
        "config": asdict(config),
        "history": history,
        "wall_time_s": round(elapsed, 1),
        "machine": "; ".join(machines) or here,
        "torch": str(torch.__version__),
    }
    save_weights(model.cpu(), weights_path, metadata)
    log(f"wrote {weights_path}")
    return weights_path
