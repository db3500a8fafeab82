"""`alignsweep sync SWEEP_DIR`: upload a sweep's offline wandb runs, its summary run included.

Offline runs (no WANDB_API_KEY when the jobs ran) are written under RUN_DIR/wandb/offline-run-*
for every job and SWEEP_DIR/wandb/offline-run-* for the sweep's summary run (`collect`). This finds
them all and hands them to wandb's own `wandb sync`, after checking that an API key is set and the
W&B server (WANDB_BASE_URL, default https://api.wandb.ai) answers, so a machine without a network
gets one line saying so instead of a long retry. `--dry-run` lists the runs and syncs nothing.
SWEEP_DIR may also be a single run's directory.

Exit codes: 0 every run synced (or listed); 1 the key, the server or `wandb sync` failed; 2 a usage
mistake (no such directory, no offline runs).
"""

from __future__ import annotations

import netrc
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from alignsweep.cli_style import add_sweep_dir, tool_parser

DEFAULT_BASE_URL = "https://api.wandb.ai"


def offline_runs(sweep_dir: Path) -> list[Path]:
    """Every offline wandb run of the sweep: each job's (SWEEP_DIR/*/wandb/offline-run-*) and the
    summary run (SWEEP_DIR/wandb/offline-run-*), or a single run's own; sorted, jobs first."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted(sweep_dir.glob("*/wandb/offline-run-*"))
    own = sorted(sweep_dir.glob("wandb/offline-run-*"))
    return [p for p in jobs + own if p.is_dir()]


def api_key(base_url: str) -> str | None:
    """The W&B API key wandb would use: WANDB_API_KEY, else the ~/.netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(urllib.parse.urlparse(base_url).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def unreachable(base_url: str, timeout: float = 10.0) -> str | None:
    """Why the server at `base_url` cannot be reached (None when it answers at all, any HTTP status)."""
    try:
        urllib.request.urlopen(urllib.request.Request(base_url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def wandb_command() -> str | None:
    """The `wandb` executable installed with this Python (else the first on PATH)."""
    beside = Path(sys.executable).with_name("wandb")
    return str(beside) if beside.exists() else shutil.which("wandb")


def sync(runs: list[Path], base_url: str, timeout: float) -> tuple[int, str]:
    """Run `wandb sync` on `runs`; (exit code, its output)."""
    command = wandb_command()
    if command is None:
        return 1, "the wandb command is not installed (pip install wandb)"
    try:
        proc = subprocess.run([command, "sync", *map(str, runs)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, env=dict(os.environ, WANDB_BASE_URL=base_url))
    except subprocess.TimeoutExpired:
        return 1, f"wandb sync did not finish within {timeout:g} s"
    return proc.returncode, proc.stdout + proc.stderr


def _failure(output: str) -> str | None:
    """The line of wandb's output that says what went wrong, if it says so."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "traceback" in line.lower() or "failed" in line.lower():
            return line
    return None


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep sync", __doc__)
    add_sweep_dir(parser, "a sweep directory (or one run directory)")
    parser.add_argument("--dry-run", action="store_true", help="list the offline runs, sync nothing")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds wandb sync may take (default 3600)")
    args = parser.parse_args(argv)
    runs = offline_runs(args.sweep_dir)
    if not runs:
        print(f"error: {args.sweep_dir} holds no offline wandb runs (*/wandb/offline-run-* or wandb/offline-run-*); "
              "runs logged online are on the server already", file=sys.stderr)
        return 2
    for run in runs:
        print(run)
    summary = sum(run.parent.parent == args.sweep_dir for run in runs)
    print(f"[alignsweep] {len(runs)} offline run(s): {len(runs) - summary} job run(s), {summary} summary run(s)")
    if args.dry_run:
        return 0
    base_url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
    if api_key(base_url) is None:
        print(f"error: no W&B API key for {base_url}: run `wandb login` or set WANDB_API_KEY, then "
              f"`alignsweep sync {args.sweep_dir}` again", file=sys.stderr)
        return 1
    why = unreachable(base_url)
    if why is not None:
        print(f"error: cannot reach the W&B server {base_url} ({why}); nothing synced. From a machine with "
              f"internet (or with WANDB_BASE_URL set to your server): alignsweep sync {args.sweep_dir}",
              file=sys.stderr)
        return 1
    code, output = sync(runs, base_url, args.timeout)
    problem = _failure(output) if code == 0 else (_failure(output) or f"wandb sync exited with {code}")
    if problem is not None:
        print(f"error: wandb sync of {args.sweep_dir} failed: {problem}", file=sys.stderr)
        return 1
    print(f"[alignsweep] synced {len(runs)} run(s) to {base_url}")
    return 0


if __name__ == "__main__":
    from alignsweep.cli_style import run_tool

    sys.exit(run_tool(main, sys.argv[1:]))
