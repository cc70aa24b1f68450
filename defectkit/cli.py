"""The ``defectkit`` command: run, train, eval, predict, export, check-data and plugins.

Exit status: 0 success; 1 a fatal error (message printed, no traceback); 2 bad usage (a wrong
argument, or a config file, key, option or value that is not allowed: :class:`ConfigError`); 3 the
command finished but some inputs could not be processed (each has an error line in
``predictions.jsonl``; for ``check-data``: problems were found in the data set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

# Decoding and writing threads share the cores with torch's OpenMP threads; spinning OpenMP
# workers (the default wait policy) then starve them and each other. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_SOME_INPUTS_FAILED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    from defectkit import __version__
    from defectkit.config import DictAction
    from defectkit.export import CALIBRATION_IMAGES, INT8_MAX_DROP

    parser = argparse.ArgumentParser(prog="defectkit", description="Visual-defect inspection pipelines.")
    parser.add_argument("--version", action="version", version=f"defectkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str, work_dir_required: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config", help="config file, e.g. configs/texture_defect.py")
        sub.add_argument("--work-dir", required=work_dir_required, help="weights and results (default work_dirs/<config name>)")
        sub.add_argument(
            "--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
            help="override config values, e.g. pipeline.0.batch_size=8 split.seed=1",
        )
        return sub

    overwrite_help = "if the results folder holds another run's results, move them into <folder>/previous-<UTC time>/ (default: refuse)"
    run = with_config("run", "Fit untrained stages, evaluate on the test split, write predictions and the report.")
    run.add_argument("--data-root", help="data set folder (default: the config's built-in data set)")
    run.add_argument("--overwrite", action="store_true", help=overwrite_help)
    train = with_config("train", "Fit every trainable stage that has no saved state in the work dir.")
    train.add_argument("--data-root", help="data set folder (default: the config's built-in data set)")
    evaluate = with_config("eval", "Evaluate fitted stages on a labelled data set.", work_dir_required=True)
    evaluate.add_argument("--data-root", help="data set folder in the config's layout (default: the one trained on)")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "train", "all"], help="which images to evaluate")
    evaluate.add_argument("--out", help="results folder (default: the work dir for the training data, else work_dir/eval-<split>-<data root name>)")
    evaluate.add_argument("--overwrite", action="store_true", help=overwrite_help)
    predict = with_config("predict", "Predict on image files or folders with fitted stages.", work_dir_required=True)
    predict.add_argument("--input", nargs="+", required=True, metavar="PATH", help="image files or folders (fsspec URLs with --engine ray)")
    predict.add_argument("--out", required=True, help="results folder (one command at a time; not the work dir)")
    predict.add_argument("--overwrite", action="store_true", help=overwrite_help)
    predict.add_argument(
        "--engine", choices=["local", "ray"], default="local",
        help="local: this process (default); ray: a pool of Ray actors, inputs and --out may be fsspec URLs (docs/scaling.md)",
    )
    predict.add_argument("--workers", type=int, metavar="N", help="--engine ray: actors in the pool (default: every CPU Ray has)")
    predict.add_argument("--ray-address", metavar="ADDR", help="--engine ray: an existing Ray cluster (default: start Ray on this machine)")
    cv = with_config(
        "cv",
        "Cross-validate the config on the train+val images of the run's split (the test split is never read): "
        "one fit per fold, pooled metrics in <work dir>/cv/cv.json.",
    )
    cv.add_argument("--data-root", help="data set folder (default: the config's built-in data set)")
    cv.add_argument("--folds", type=int, default=4, help="number of folds (default 4)")
    export = with_config(
        "export",
        "Export every network stage (ONNX or OpenVINO) to <work dir>/exported with a manifest and a parity check "
        "against PyTorch; predict.runtime=onnxruntime|openvino then runs them.",
        work_dir_required=True,
    )
    export.add_argument("--format", default="onnx", choices=["onnx", "openvino"], help="what to write (default onnx)")
    export.add_argument("--data-root", help="data set whose validation photos the parity check uses (default: the one trained on)")
    export.add_argument("--images", type=int, default=4, metavar="N", help="validation photos in the parity check (default 4, at least 2)")
    export.add_argument(
        "--int8", action="store_true",
        help="also write INT8 networks calibrated on training photos, each kept only where the config's primary validation "
        "metrics drop by at most --max-drop; predict.precision=int8 then runs the kept ones",
    )
    export.add_argument("--max-drop", type=float, default=INT8_MAX_DROP, metavar="D",
                        help=f"--int8: largest accepted drop of a primary validation metric, absolute (default {INT8_MAX_DROP})")
    export.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, metavar="N",
                        help=f"--int8: training photos that calibrate the activation ranges (default {CALIBRATION_IMAGES})")
    check = commands.add_parser(
        "check-data",
        help="Validate a data set in the config's layout and print a summary (exit 3 if problems are found).",
        description="Validate a data set in the config's layout: every image and mask decodes, masks match their "
        "images, polygons can be drawn, classes are known, nothing is listed twice or lies outside the root.",
    )
    check.add_argument("config", help="config file whose 'dataset' reader is used, e.g. configs/texture_defect.py")
    check.add_argument("--data-root", required=True, help="data set folder in the config's layout")
    check.add_argument(
        "--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
        help="override config values, e.g. dataset.type=DefectSplitLayout",
    )
    check.add_argument("--out", help="write every problem found (and the counts) to this JSON file")
    check.add_argument("--max-problems", type=int, default=20, metavar="N", help="problems to print (default 20)")
    commands.add_parser("plugins", help="List installed plugins and what they register.")
    from defectkit.review.command import add_review_command

    add_review_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``defectkit`` command."""
    args = build_parser().parse_args(argv)
    # Deprecation notices raised inside timm/anomalib's own imports say nothing to our users.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(timm\.models\.layers|anomalib\.models\.components\.dinov2).*")
    from defectkit.errors import ConfigError, DefectkitError

    try:
        return _dispatch(args)
    except ConfigError as exc:
        # A bad config file, key, option or value is bad usage: one line, exit status 2.
        from rich.markup import escape

        # Escaped: a message may quote brackets (``pip install 'defectkit[ray]'``) that are not markup.
        _console().print(f"[bold red]config error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except DefectkitError as exc:
        _print_error(str(exc))
        return EXIT_FATAL
    except OSError as exc:  # a folder that is read-only, full, missing or not ours: say which and why
        _print_error(_os_error_line(exc))
        return EXIT_FATAL
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted: run the same command again to continue where it stopped[/yellow]")
        return 130


def _print_error(message: str) -> None:
    """``error: <message>`` on stderr, never wrapped, and with paths that look like markup printed as they are."""
    from rich.markup import escape

    _console().print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def _os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` (both paths for a rename) on one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "(no path given)"
    # A file name may hold line breaks; escape them so the message stays one line.
    return f"{where}: {reason}".replace("\r", "\\r").replace("\n", "\\n")


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _dispatch(args: argparse.Namespace) -> int:
    from defectkit.plugins import load_plugins

    plugins = load_plugins()
    if args.command == "plugins":
        return _list_plugins(plugins)
    if args.command == "review":
        from defectkit.review.command import run_review

        return run_review(args)

    from defectkit.config import load_config

    if args.command == "predict":
        _check_engine(args)  # before the config and models load: a wrong flag costs nothing
    cfg = load_config(args.config, args.cfg_options)
    if args.command == "check-data":
        return _check_data(cfg, args)

    from defectkit.runner import Runner

    runner = Runner(cfg, args.config, data_root=getattr(args, "data_root", None), work_dir=args.work_dir)
    if args.command == "cv":
        from defectkit.cross_validation import cross_validate

        summary = cross_validate(cfg, args.config, args.data_root, runner.work_dir / "cv", folds=args.folds, log=_console().print)
        _console().print(f"per-fold results in {runner.work_dir / 'cv'}")
        _print_json("cross-validated metrics (pooled over every train+val image)", summary["pooled"])
        return EXIT_OK
    if args.command == "export":
        if args.calibration_images < 1 or not 0 <= args.max_drop < 1:
            from defectkit.errors import ConfigError

            raise ConfigError(f"--calibration-images must be at least 1 (got {args.calibration_images}) and --max-drop "
                              f"in [0, 1) (got {args.max_drop})")
        section = runner.export(args.format, n_images=args.images, data_root=args.data_root, int8=args.int8,
                                max_drop=args.max_drop, calibration_images=args.calibration_images)
        _console().print(f"exported to {runner.export_dir}")
        _print_json("exported", section)
        return EXIT_OK
    if args.command == "train":
        summaries = runner.train()
        _print_json("fitted", summaries)
        return EXIT_OK
    if args.command == "run":
        metrics = runner.run(overwrite=args.overwrite)
    elif args.command == "eval":
        out = Path(args.out) if args.out else _default_eval_dir(runner, args)
        metrics = runner.evaluate(split=args.split, out_dir=out, data_root=args.data_root, overwrite=args.overwrite)
        _console().print(f"results in {out}")
    elif args.engine == "ray":
        from defectkit.ray_engine import predict_on_ray

        metrics = predict_on_ray(runner, args.input, args.out, args.overwrite, workers=args.workers, address=args.ray_address)
        _console().print(f"results in {args.out}")
    else:
        metrics = runner.predict(args.input, Path(args.out), overwrite=args.overwrite)
        _console().print(f"results in {args.out}")
    _print_json("metrics", metrics)
    return EXIT_SOME_INPUTS_FAILED if metrics.get("n_errors") else EXIT_OK


def _check_engine(args: argparse.Namespace) -> None:
    """Refuse predict options the chosen engine cannot use (one line, exit 2)."""
    from defectkit.errors import ConfigError

    if args.engine == "ray":
        from defectkit.ray_engine import import_ray

        import_ray()
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {args.workers}")
        return
    ray_only = [flag for flag, value in (("--workers", args.workers), ("--ray-address", args.ray_address)) if value is not None]
    if ray_only:
        raise ConfigError(f"{' and '.join(ray_only)} need(s) --engine ray")
    urls = [item for item in [*args.input, args.out] if "://" in item]
    if urls:
        raise ConfigError(f"{urls[0]}: URLs need --engine ray (the local engine reads and writes local paths)")


def _check_data(cfg: Any, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from defectkit.data.check import check_dataset
    from defectkit.io.atomic import atomic_write_json
    from defectkit.runner import build_dataset

    # With a data root the work dir is not used (it only holds a generated built-in data set).
    reader = build_dataset(cfg, args.config, work_dir=".", data_root=str(args.data_root))
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=_console(), transient=True,
    )
    with progress:

        def bar(total: int):
            task = progress.add_task("checking images", total=total)
            return lambda n=1: progress.advance(task, n)

        result = check_dataset(reader, list(cfg.get("classes", [])), list(cfg.get("image_classes", ["normal", "defect"])), bar)
    console = Console(soft_wrap=True)
    for renderable in result.summary_tables(max_problems=max(0, args.max_problems)):
        console.print(renderable)
    if args.out:
        atomic_write_json(Path(args.out), result.to_dict())
        console.print(f"full report in {args.out}")
    return EXIT_OK if result.ok else EXIT_SOME_INPUTS_FAILED


def _default_eval_dir(runner: Any, args: argparse.Namespace) -> Path:
    if args.split == "test" and (args.data_root is None or _same_path(args.data_root, runner.data_root)):
        return runner.work_dir
    name = Path(args.data_root).resolve().name if args.data_root else "builtin"
    return runner.work_dir / f"eval-{args.split}-{name}"


def _same_path(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _list_plugins(plugins: list) -> int:
    from rich.table import Table

    table = Table(title="defectkit plugins (entry point group defectkit.plugins)")
    for column in ("name", "target", "package", "status", "registers"):
        table.add_column(column)
    for info in plugins:
        status = "loaded" if info.loaded else f"failed: {info.error}"
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        table.add_row(info.name, info.target, info.distribution or "", status, registers or "-")
    from rich.console import Console

    Console().print(table if plugins else "no plugins installed")
    return EXIT_OK


def _print_json(title: str, payload: Any) -> None:
    print(json.dumps({title: payload}, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    sys.exit(main())
