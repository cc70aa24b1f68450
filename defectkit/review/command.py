"""``defectkit review WORK_DIR``: arguments and start-up (kept apart so the CLI imports no web framework)."""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import sys

from defectkit.errors import DefectkitError

REVIEW_HELP = "Review a run in the browser: accept, reject, correct and export its predictions."


def add_review_command(commands: argparse._SubParsersAction) -> None:
    """Add the ``review`` subcommand to the CLI's subparsers."""
    from defectkit.config import DictAction

    review = commands.add_parser("review", help=REVIEW_HELP, description=REVIEW_HELP)
    review.add_argument("work_dir", help="a run's results folder (predictions.jsonl, overlays/, report.html)")
    review.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    review.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only); any other address requires the printed token",
    )
    review.add_argument("--config", help="the run's config (default: the one run_info.json names), for ground truth and uploads")
    review.add_argument(
        "--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
        help="the --cfg-options the run was started with",
    )
    review.add_argument("--data-root", help="the evaluated data root, if not the one the run recorded")
    review.add_argument("--max-upload-mb", type=float, default=20.0, help="largest photo accepted on the upload page (default 20)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_review(args: argparse.Namespace) -> int:
    """Start the app and serve until interrupted."""
    try:
        import uvicorn

        from defectkit.review.app import LOOPBACK_HOSTS, ReviewState, create_app
    except ImportError as exc:
        raise DefectkitError(f"defectkit review needs the review extra ({exc.name} is missing): pip install 'defectkit[review]'") from exc
    if not 0 < args.port < 65536:
        raise DefectkitError(f"--port must be 1-65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise DefectkitError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    state = ReviewState(
        args.work_dir, args.config, args.cfg_options, args.data_root, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024)
    )
    local = is_loopback(args.host)
    token = None if local else secrets.token_urlsafe(24)
    app = create_app(state, token=token, allowed_hosts=LOOPBACK_HOSTS if local else ["*"])
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"reviewing {len(state.items)} images of {state.work_dir}", file=sys.stderr)
    if state.config_note:
        print(f"note: {state.config_note} (ground truth and uploads are off)", file=sys.stderr)
    print(f"open {url}" + ("  (the token is required: anyone with it can change decisions)" if token else ""), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
