"""The ``focusfuse`` command line: parses options, shows progress, calls the library.

Output policy (a microscopist at a terminal, a shell script, cron):
- stderr is a terminal: a progress bar, then one summary line;
- a controlling terminal but stderr redirected (a script's log): one summary line;
- no terminal at all (cron, CI) or ``--quiet``: nothing but errors.
Warnings (a result that is written but may not be what was asked for: slices that
could not be aligned) are one line each, ``focusfuse: warning: STACK: problem``,
everywhere but under ``--quiet``. Errors are one line on stderr, ``focusfuse: error: FILE: problem``, exit status 1.
"""

from __future__ import annotations

import gc
import glob
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import click

from focusfuse import __version__
from focusfuse.batch.discovery import OUTPUT_FORMATS
from focusfuse.batch.runner import DEFAULT_SETTLE_S
from focusfuse.errors import FocusFuseError
from focusfuse.fusion.alignment import ALIGN_MODES
from focusfuse.fusion.compositing import COMPOSITES
from focusfuse.fusion.pipeline import DEFAULT_BATCH_SIZE, fuse_stack
from focusfuse.fusion.resolution import (
    DEFAULT_DECISION_SIDE,
    DEFAULT_MAX_REDUCTION,
    FAST_DECISION_SIDE,
    MAX_REDUCTION,
    SPEEDS,
)
from focusfuse.fusion.strategies import STRATEGIES
from focusfuse.interruption import outputs_end_the_command, start_command, stop, written_outputs
from focusfuse.io.reader import natural_key
from focusfuse.io.writer import check_output_path, discard_unplaced

EXIT_ERROR = 1  # a bad input or setting
EXIT_OUT_OF_MEMORY = 3
EXIT_INTERNAL = 4  # a bug: the message says so, --debug shows the traceback
EXIT_SOME_FAILED = 5  # batch: some stacks failed, the others were fused
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


def has_controlling_terminal() -> bool:
    """True when the process has a terminal (an interactive shell, a script run from one); false under cron."""
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        return False


def output_mode(quiet: bool) -> str:
    """``progress``, ``summary`` or ``silent`` (see the module docstring)."""
    if quiet:
        return "silent"
    if sys.stderr.isatty():
        return "progress"
    return "summary" if has_controlling_terminal() else "silent"


class MemorySize(click.ParamType):
    """A size in bytes written as 1500000, 800M, 2G or 1.5G (powers of 1024)."""

    name = "size"
    UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)i?B?\s*", str(value), re.IGNORECASE)
        if match is None or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a size such as 800M or 2G", param, ctx)
        return int(float(match.group(1)) * self.UNITS[match.group(2).upper()])


def expand_inputs(inputs: tuple[str, ...]) -> list[str]:
    """Expand quoted glob patterns (naturally sorted); plain paths stay in the order given."""
    expanded: list[str] = []
    for item in inputs:
        if not os.path.exists(item) and glob.has_magic(item):
            matches = sorted(glob.glob(item), key=natural_key)
            if not matches:
                raise FocusFuseError(f"{item}: the pattern matches no file")
            expanded.extend(matches)
        else:
            expanded.append(item)
    return expanded


@contextmanager
def progress_bar(unit: str):
    """A rich bar on stderr counting ``unit``, cleared when done; yields (bar, task)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield bar, bar.add_task("fusing", total=None)


@contextmanager
def progress_reporter(mode: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback over slices: a rich bar in ``progress`` mode, else a no-op."""
    if mode != "progress":
        yield lambda done, total: None
        return
    with progress_bar("slices") as (bar, task):
        yield lambda done, total: bar.update(task, completed=done, total=total)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops as cleanly as on Ctrl-C."""


def stop_like_ctrl_c(signum, frame) -> None:
    """SIGTERM handler (``kill``, a cron or batch-system timeout): the clean stop of Ctrl-C, not an instant death.

    Outputs being written are removed (atomic writes), a training run stops its batch
    workers and keeps its last whole checkpoint.
    """
    stop(Terminated(), signal.SIGTERM)


def stop_on_ctrl_c(signum, frame) -> None:
    """SIGINT handler: Python's KeyboardInterrupt, held back while a lock or temporary file is being set up."""
    stop(KeyboardInterrupt(), signal.SIGINT)


# Signals this process ignores because a command ended: its outputs are in place and
# reported, and a stop as the interpreter exits would only print a traceback from some
# exit hook (``Exception ignored ...``) or end a finished run with a signal's status.
# SIG_IGN, not a Python handler: the interpreter resets those to the default as it
# exits, and the process would then die of the signal.
_ignored_since_a_command_ended: set[int] = set()


def ignore_stops_from_now() -> None:
    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, signal.SIG_IGN)
            _ignored_since_a_command_ended.add(number)


def fail(error: Exception) -> None:
    click.echo(f"focusfuse: error: {error}", err=True)
    sys.exit(EXIT_ERROR)


def out_of_memory() -> NoReturn:
    click.echo("focusfuse: error: out of memory (the image is too large for this machine)", err=True)
    sys.exit(EXIT_OUT_OF_MEMORY)


class FocusFuseGroup(click.Group):
    """Every command under one policy: SIGTERM stops cleanly, every failure is one line with its exit status."""

    def invoke(self, ctx: click.Context):
        signal.signal(signal.SIGTERM, stop_like_ctrl_c)
        ours = signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.SIGINT in _ignored_since_a_command_ended
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler or ours:
            signal.signal(signal.SIGINT, stop_on_ctrl_c)  # not where the shell ignores it (nohup, `&`)
        _ignored_since_a_command_ended.clear()
        debug = bool(ctx.params.get("debug")) or os.environ.get("FOCUSFUSE_DEBUG") == "1"
        start_command()
        try:
            result = super().invoke(ctx)
            ignore_stops_from_now()
            return result
        except FocusFuseError as error:
            discard_unplaced()
            fail(error)
        except KeyboardInterrupt as interrupt:
            ignore_stops_from_now()  # a second Ctrl-C does not cut this message short
            discard_unplaced()
            written = written_outputs()
            kept = {"train": "; the last whole checkpoint is kept", "batch": "; the stacks fused so far are kept"}.get(
                ctx.invoked_subcommand or "",
                f"; every output was written whole first: {', '.join(written)}" if written else "; no output written",
            )
            click.echo(f"focusfuse: interrupted{kept}", err=True)
            sys.exit(EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED)
        except MemoryError:
            if debug:
                raise
            out_of_memory()
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            if debug:
                raise
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            if isinstance(error, RuntimeError) and ("alloc" in message or "out of memory" in message):
                out_of_memory()
            click.echo(
                f"focusfuse: error: internal error ({type(error).__name__}: {message[:200]}); "
                "run with --debug for the traceback",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)


@click.group(cls=FocusFuseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="focusfuse")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def main(debug: bool) -> None:
    """Focus stacking for microscopy z-stacks (GACN with decision calibration)."""
    # The imports (torch's above all) leave a few hundred thousand objects that live as long as
    # the process. Frozen out of the collector's sight, they cost nothing at its collections and
    # at exit: 0.25-0.35 s of a short command's shutdown on a 2-core CPU (`python -c "import
    # torch"` against the same with gc.freeze() last: 1.29-1.46 s against 1.10-1.14 s).
    gc.freeze()


def fusion_options(command: Callable) -> Callable:
    """The options of ``stack`` and ``batch`` that say how a stack is fused.

    They reach the command as keyword arguments named as ``fuse_stack``'s (and ``BatchSettings``'s).
    """
    options = [
        click.option(
            "--device", default="auto", show_default=True, help="auto, cpu or cuda (auto = CUDA when present)."
        ),
        click.option(
            "--strategy",
            type=click.Choice(STRATEGIES),
            default="calibrated",
            show_default=True,
            help="N-slice strategy.",
        ),
        click.option(
            "--composite",
            type=click.Choice(COMPOSITES),
            default="pyramid",
            show_default=True,
            help="Calibrated strategies: blend the chosen slices in a Laplacian pyramid (no seams), "
            "or select each pixel from its slice (exact source intensities).",
        ),
        click.option(
            "--align",
            type=click.Choice(ALIGN_MODES),
            default="auto",
            show_default=True,
            help="Register every slice to the middle one (neighbour to neighbour, chained): "
            "similarity for drift and focus breathing; auto: a similarity applied only to a stack "
            "read as moved by many times the estimate's own uncertainty (a pair of two images: "
            "never); none: fuse the slices as read.",
        ),
        click.option("--crop", is_flag=True, help="Crop the result to the area every aligned slice covers."),
        click.option(
            "--max-memory",
            type=MemorySize(),
            default="2G",
            show_default=True,
            help="Memory budget (K, M, G suffixes): larger images are fused in tiles. At most what is available.",
        ),
        click.option(
            "--speed",
            type=click.Choice(SPEEDS),
            default="default",
            show_default=True,
            help="Which slice is sharp is decided on the slices shrunk to a long side of "
            f"{DEFAULT_DECISION_SIDE} px (default, by at most {DEFAULT_MAX_REDUCTION}x) or {FAST_DECISION_SIDE} px "
            f"(fast, by at most {MAX_REDUCTION}x); "
            "the full-size slices are fused under that choice.",
        ),
        click.option(
            "--prune/--no-prune",
            default=False,
            show_default=True,
            help="Calibrated: in each tile, run the network only on the slices a focus screen finds can win there "
            "(faster on deep stacks; changes some choices).",
        ),
        click.option(
            "--weights",
            type=click.Path(dir_okay=False),
            help="Weights file. [default: $FOCUSFUSE_WEIGHTS, else the shipped weights]",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def series_options(command: Callable) -> Callable:
    """The options of ``stack`` and ``info`` that pick one z-stack of a CZI, ND2, LIF or OME-Zarr file."""
    options = [
        click.option("--scene", help="CZI scene or LIF image (LAS X series), OME-Zarr series: index from 0, or name."),
        click.option("--position", help="ND2 multipoint position: index from 0, or name."),
        click.option("--time", type=click.IntRange(min=0), help="Time point (from 0) of a time series."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="Fused image (.png, .tif, .ome.tif or .jpg).")
@click.option(
    "--index-map",
    type=click.Path(),
    help="Index map (0-based slice per pixel). [default: NAME.index.png]",
)
@click.option("--timing", type=click.Path(), help="Timing report, JSON. [default: NAME.timing.json]")
@click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=int,
    help="Slices whose features (calibrated-paper: also decision paths) run together.",
)
@click.option(
    "--height-map",
    "height_map_path",
    type=click.Path(dir_okay=False),
    help="Surface height, float32 TIFF: micrometres from the z-step, refined between slices; NaN where flat.",
)
@click.option(
    "--height-preview",
    "height_preview_path",
    type=click.Path(dir_okay=False),
    help="The height as a colour-mapped PNG with a colour bar (and a length bar when the pixel size is known).",
)
@click.option(
    "--z-step",
    type=click.FloatRange(min=0, min_open=True),
    help="Micrometres between slices. [default: the stack's OME or ImageJ metadata, else slice units]",
)
@click.option("--fill-height", is_flag=True, help="Untextured pixels get the height of their rims instead of NaN.")
@click.option(
    "--channels",
    "channel_folders",
    is_flag=True,
    help="INPUTS are folders, one per channel, of gray slices: fused as one multichannel stack.",
)
@click.option(
    "--reference-channel",
    type=click.IntRange(min=0),
    help="Channel (from 0) whose index map fuses every channel. [default: the one with the most texture]",
)
@series_options
@fusion_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def stack(inputs, output, index_map, timing, batch_size, quiet, **fusion) -> None:
    """Fuse a z-stack into one all-in-focus image and an index map.

    INPUTS is a directory (images in natural order), image files (order kept),
    one multipage TIFF (also ImageJ hyperstacks and OME-TIFF with a Z axis), or one
    CZI, ND2 or LIF file or OME-Zarr folder (pip install 'focusfuse[formats]').
    """
    mode = output_mode(quiet)
    outputs_end_the_command()
    paths = list(inputs) if fusion.get("channel_folders") else expand_inputs(inputs)
    with progress_reporter(mode) as progress:
        result = fuse_stack(
            paths,
            output=output,
            index_map_path=index_map,
            timing_path=timing,
            batch_size=batch_size,
            progress=progress,
            **fusion,
        )
    record = result.timing
    if not quiet:
        warnings = list(record["alignment"]["warnings"])
        if record.get("height_map", {}).get("unit") == "slices":
            warnings.append("no z-step in the stack's metadata and no --z-step: the height map is in slice units")
        for warning in warnings:
            click.echo(f"focusfuse: warning: {record['stack']}: {warning}", err=True)
    if mode != "silent":
        written = record["outputs"]
        click.echo(
            f"fused {record['n_slices']} slices {record['width']}x{record['height']} "
            f"({record['strategy']}, {record['device']}) "
            f"in {record['total_s']:.2f} s -> {written['fused']}, {written['index_map']}, {written['timing']}",
            err=True,
        )


@main.command()
@click.argument("roots", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out_root", required=True, type=click.Path(file_okay=False), help="OUTROOT.")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default="png", show_default=True)
@click.option("--pattern", help="Fuse only stacks whose path under ROOT matches this shell pattern ('*/pos*').")
@click.option("--min-slices", default=2, show_default=True, type=click.IntRange(min=2))
@click.option(
    "--settle",
    default=DEFAULT_SETTLE_S,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Leave a stack for a later run while any of its files changed less than this many seconds ago.",
)
@click.option("--force", is_flag=True, help="Fuse stacks again even when their results are up to date.")
@click.option("--retry-failed", is_flag=True, help="Try again stacks that failed before on the same files.")
@click.option("--dry-run", is_flag=True, help="List what would be fused, and why anything is not; fuse nothing.")
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    help="Worker processes. [default: one per core, as many as --max-memory allows; 2 on a GPU]",
)
@click.option("--scheduler", help="Run the stacks on this Dask scheduler's workers (tcp://host:8786).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="One row per stack: JSON lines, or CSV.")
@fusion_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def batch(
    roots,
    out_root,
    output_format,
    pattern,
    min_slices,
    settle,
    force,
    retry_failed,
    dry_run,
    jobs,
    scheduler,
    report_path,
    quiet,
    **fusion,
) -> None:
    """Fuse every z-stack under ROOT folders into OUTROOT, skipping what is already done.

    A folder of two or more images is a stack, and so is each multipage TIFF; results
    mirror the tree (ROOT/day1/pos3/ -> OUTROOT/day1/pos3.png with its index map and
    timing report). A stack is fused again only when its files, the weights or the
    options change. Exit status 0 when every due stack was fused, 5 when any failed.
    """
    import time
    from pathlib import Path

    from focusfuse.batch.discovery import discover_stacks
    from focusfuse.batch.report import summary_line, write_report
    from focusfuse.batch.runner import BatchSettings, run_batch

    started = time.perf_counter()
    mode = output_mode(quiet)
    out = Path(out_root)
    found = discover_stacks(
        [Path(root) for root in roots], out, output_format=output_format, pattern=pattern, min_slices=min_slices
    )
    settings = BatchSettings(
        **fusion,
        settle_s=settle,
        force=force,
        retry_failed=retry_failed,
    )
    if dry_run:
        from focusfuse.batch.runner import dry_run as look

        for outcome in look(found.jobs, settings):
            why = outcome.error or outcome.detail or (f"-> {outcome.fused}" if outcome.fused else "")
            click.echo(f"{outcome.status:<14} {outcome.stack}  ({outcome.slices} slices)  {why}".rstrip())
        for passed in found.passed:
            click.echo(f"{'not a stack':<14} {passed.name}  {passed.reason}")
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FocusFuseError(f"{out}: cannot create ({error.strerror or error})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise FocusFuseError(f"{out}: is not writable (permission denied)")
    report_file = Path(report_path) if report_path else None
    if report_file is not None:
        check_output_path(report_file, report=True)
    with batch_reporter(mode) as (on_due, on_outcome):
        outcomes = run_batch(
            found.jobs, settings, workers=jobs, scheduler=scheduler, on_outcome=on_outcome, on_due=on_due
        )
    if report_file is not None:
        write_report(report_file, outcomes)
    if mode != "silent":
        click.echo(summary_line(outcomes, time.perf_counter() - started), err=True)
    if any(outcome.status == "failed" for outcome in outcomes):
        sys.exit(EXIT_SOME_FAILED)


@contextmanager
def batch_reporter(mode: str) -> Iterator[tuple[Callable[[int], None], Callable]]:
    """(on_due, on_outcome) for ``run_batch``: a bar over the stacks on a terminal; failures always, one line each."""

    def error_line(outcome) -> str | None:
        return f"focusfuse: error: {outcome.error}" if outcome.status == "failed" else None

    if mode != "progress":

        def on_outcome(outcome) -> None:
            line = error_line(outcome)
            if line:
                click.echo(line, err=True)

        yield (lambda due: None), on_outcome
        return
    with progress_bar("stacks") as (bar, task):
        fusing = {"started": False}

        def on_due(due: int) -> None:
            fusing["started"] = True
            bar.update(task, total=due)

        def on_progress(outcome) -> None:
            line = error_line(outcome)
            if line:
                bar.console.print(line, markup=False, highlight=False, soft_wrap=True)  # one line, unwrapped
            if fusing["started"]:
                bar.advance(task)

        yield on_due, on_progress


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the facts as one JSON object.")
@click.option(
    "--align",
    type=click.Choice(ALIGN_MODES),
    default="auto",
    show_default=True,
    help="Estimate and print the alignment transforms as `stack` would (none: skip).",
)
@click.option("--max-memory", type=MemorySize(), default="2G", show_default=True, help="The budget to plan for.")
@click.option("--z-step", type=click.FloatRange(min=0, min_open=True), help="Micrometres between slices.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="calibrated", show_default=True)
@click.option("--channels", "channel_folders", is_flag=True, help="INPUTS are folders, one per channel.")
@click.option("--reference-channel", type=click.IntRange(min=0), help="The channel whose index map would fuse all.")
@series_options
def info(inputs, as_json, align, max_memory, z_step, strategy, channel_folders, reference_channel, **series) -> None:
    """What `stack` would read and do with INPUTS, without fusing.

    Slices and their order, size, dtype and the bits the pixels use, axes and
    channels, pixel size and z-step (and where they were found), the memory plan,
    and the alignment transforms with why `stack` would warp the slices or not.
    """
    import json

    from focusfuse.fusion.info import describe_stack, format_info

    paths = list(inputs) if channel_folders else expand_inputs(inputs)
    facts = describe_stack(
        paths,
        max_memory=max_memory,
        align=align,
        z_step=z_step,
        strategy=strategy,
        channel_folders=channel_folders,
        reference_channel=reference_channel,
        **series,
    )
    click.echo(json.dumps(facts, indent=2) if as_json else format_info(facts))


@main.command()
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="BSDS500 folder (train/ val/ test/).",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder: checkpoint, log, weights."
)
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--steps-per-epoch", default=125, show_default=True, type=int)
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--crop", default=96, show_default=True, type=int, help="Training crop side, pixels.")
@click.option("--lr", "learning_rate", default=1e-3, show_default=True, type=float)
@click.option("--lr-decay", default=0.8, show_default=True, type=float, help="LR factor every --decay-every epochs.")
@click.option("--decay-every", default=2, show_default=True, type=int)
@click.option("--qg-weight", default=1.0, show_default=True, type=float, help="lambda of the Qg loss (0 = Dice only).")
@click.option(
    "--score-sigma",
    default=0.0,
    show_default=True,
    type=float,
    help="Gaussian pooling of the decision score before the sigmoid, pixels (0 = the paper's network).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--validation-pairs", default=48, show_default=True, type=int)
@click.option(
    "--workers",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Processes making batches ahead of the network (0 = none); for a GPU, about the free cores.",
)
@click.option(
    "--init",
    "init_weights",
    type=click.Path(exists=True, dir_okay=False),
    help="Start from these weights (fine-tuning).",
)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoint.pt.")
def train(
    data_dir,
    out_dir,
    epochs,
    steps_per_epoch,
    batch_size,
    crop,
    learning_rate,
    lr_decay,
    decay_every,
    qg_weight,
    score_sigma,
    seed,
    device,
    validation_pairs,
    workers,
    init_weights,
    resume,
) -> None:
    """Train GACN on synthetic multi-focus pairs made from BSDS500 (Dice + Qg loss)."""
    from focusfuse.fusion.pipeline import resolve_device
    from focusfuse.training.trainer import TrainConfig
    from focusfuse.training.trainer import train as run_training

    config = TrainConfig(
        data_dir=data_dir,
        out_dir=out_dir,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        crop=crop,
        learning_rate=learning_rate,
        lr_decay=lr_decay,
        decay_every=decay_every,
        qg_weight=qg_weight,
        score_sigma=score_sigma,
        seed=seed,
        device=str(resolve_device(device)),
        validation_pairs=validation_pairs,
        workers=workers,
        init_weights=init_weights,
    )
    run_training(config, log=lambda line: click.echo(line, err=True), resume=resume)


@main.command()
@click.argument("images", nargs=-1)
@click.option("--pairs", "pairs_dir", type=click.Path(), help="Folder of NAME_1 / NAME_2 source pairs.")
@click.option("--fused", "fused_dir", type=click.Path(), help="Folder of fused results, one per pair.")
@click.option("--pattern", default="{name}.png", show_default=True, help="Fused file name for pair NAME.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the values as JSON.")
@click.option("--compare", type=click.Choice(["paper"]), help="Add the paper's Table 1 rows (GACN, best per metric).")
@click.option("--workers", type=int, help="Processes for --pairs. [default: all cores]")
def evaluate(images, pairs_dir, fused_dir, pattern, json_path, compare, workers) -> None:
    """Fusion quality: Qg, Qy, Qncie, Qcb, FMI_EDGE and FMI_DCT (the paper's six metrics).

    Either three images, SOURCE_A SOURCE_B FUSED, or --pairs DIR --fused DIR for a
    table of every pair with the means.
    """
    from pathlib import Path

    from focusfuse.io.writer import check_output_path, write_json
    from focusfuse.metrics import METRIC_NAMES
    from focusfuse.metrics.evaluation import evaluate_files, evaluate_pairs, evaluation_record, find_pairs, format_table

    by_folder = pairs_dir is not None or fused_dir is not None
    if by_folder and images:
        raise FocusFuseError("give either three images or --pairs and --fused, not both")
    if by_folder and (pairs_dir is None or fused_dir is None):
        raise FocusFuseError("--pairs and --fused go together")
    if not by_folder and len(images) != 3:
        raise FocusFuseError(f"expected SOURCE_A SOURCE_B FUSED (three images), got {len(images)}")
    if json_path:
        inputs = [Path(image) for image in images]
        check_output_path(Path(json_path), inputs=inputs, report=True)
    if by_folder:
        pairs = find_pairs(pairs_dir, fused_dir, pattern)
        rows = evaluate_pairs(pairs, workers=workers)
        click.echo(format_table([pair.name for pair in pairs], rows, compare_paper=compare == "paper"))
        record = evaluation_record(pairs, rows, compare_paper=compare == "paper")
    else:
        scores = evaluate_files(*images)
        for name in METRIC_NAMES:
            click.echo(f"{name:<9} {scores[name]:.6f}")
        record = {"source_a": images[0], "source_b": images[1], "fused": images[2], **scores}
    if json_path:
        write_json(Path(json_path), record)
