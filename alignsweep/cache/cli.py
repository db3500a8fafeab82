"""`python -m alignsweep cache [CACHE_DIR] [--unused-for DAYS [--prune]]`: what the sweeps' shared
cache holds, and removing what no job has used for a while.

`paths.cache_dir` (default `$ALIGNSWEEP_CACHE_DIR`, else the user cache dir, `~/.cache/alignsweep`) keeps what the jobs of a sweep share, keyed by a
hash of its content: SFT models (`sft/`), cleaned and tokenised data (`data/`), reference
log-probs (`ref_logps/`) and step-0 evaluations (`step0/`). Entries are never removed by a sweep
(a later sweep on the same model and data reads them), so the folder grows with every new
model, data set or setting. Every job that reads an entry marks it used (its modification time),
so `--unused-for 30 --prune` removes exactly what no job has read or written for 30 days. An
entry whose lock is held (a job is computing it) is kept, whatever its age. A job that finds its
entry gone computes it again; nothing else depends on it. Lock files (empty) are kept. Imports no
torch.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from alignsweep.cache.location import ENV, default_cache_dir
from alignsweep.cli_style import tool_parser

KINDS = ("sft", "data", "ref_logps", "step0")


@dataclass
class Entry:
    kind: str
    path: Path
    size: int
    used: float  # when a job last read or wrote it (seconds since the epoch)

    @property
    def locks(self) -> list[Path]:
        """The locks under which a job computes it (its own; each part's for a folder of parts)."""
        from alignsweep.cache.store import lock_path

        own = [lock_path(self.path)]
        return own + (sorted(self.path.glob("*.lock")) if self.path.is_dir() else [])


def _is_entry(path: Path) -> bool:
    """Entries, not the files around them: locks, and the temporary files and folders of a job
    still writing one (`.name.PID.tmp`, `KEY.partial`, `KEY.trainer`)."""
    return not (path.name.startswith(".") or path.suffix in (".lock", ".tmp", ".partial", ".trainer"))


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def entries(cache_dir: Path) -> list[Entry]:
    found = []
    for kind in KINDS:
        folder = cache_dir / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if _is_entry(path):
                try:
                    found.append(Entry(kind, path, _size(path), path.stat().st_mtime))
                except FileNotFoundError:  # removed meanwhile (a job replacing a damaged entry)
                    continue
    return found


def in_use(entry: Entry) -> bool:
    """Whether a job holds one of the entry's locks right now."""
    from alignsweep.cache.store import lock_held

    return any(path.exists() and lock_held(path) for path in entry.locks)


def remove(entry: Entry) -> None:
    if entry.path.is_dir():
        shutil.rmtree(entry.path)
    else:
        entry.path.unlink(missing_ok=True)


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _age(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} hours"


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep cache", __doc__)
    parser.add_argument("cache_dir", nargs="?", default=default_cache_dir(),
                        help=f"paths.cache_dir (default: ${ENV}, else {default_cache_dir()})")
    parser.add_argument("--unused-for", type=float, metavar="DAYS",
                        help="list the entries no job has used for DAYS days")
    parser.add_argument("--prune", action="store_true", help="remove those entries (needs --unused-for)")
    args = parser.parse_args(argv)
    cache_dir = Path(args.cache_dir)
    if args.prune and args.unused_for is None:
        print("error: --prune needs --unused-for DAYS (what to remove)", file=sys.stderr)
        return 2
    if args.unused_for is not None and not args.unused_for >= 0:
        print(f"error: --unused-for: expected a number of days >= 0, got {args.unused_for}", file=sys.stderr)
        return 2
    if not cache_dir.is_dir():
        print(f"error: no cache at {cache_dir} (expected the folder of paths.cache_dir)", file=sys.stderr)
        return 2
    found = entries(cache_dir)
    now = time.time()
    print(f"{cache_dir}: {_entries(len(found))}, {human(sum(e.size for e in found))}")
    for kind in KINDS:
        mine = [e for e in found if e.kind == kind]
        if mine:
            print(f"  {kind:<10} {_entries(len(mine)):>12} {human(sum(e.size for e in mine)):>10}, "
                  f"last used {_age(now - max(e.used for e in mine))} ago")
    if args.unused_for is None:
        return 0
    old = [e for e in found if now - e.used >= args.unused_for * 86400]
    print(f"unused for {args.unused_for:g} days or more: {_entries(len(old))}, {human(sum(e.size for e in old))}")
    freed, kept = 0, 0
    for entry in old:
        busy = in_use(entry)
        note = "in use by a job: kept" if busy else ("removed" if args.prune else "would be removed")
        print(f"  {entry.kind}/{entry.path.name}  {human(entry.size)}, last used {_age(now - entry.used)} ago: {note}")
        if busy:
            kept += 1
        elif args.prune:
            remove(entry)
            freed += entry.size
    if args.prune:
        print(f"freed {human(freed)}" + (f"; {kept} in use kept" if kept else ""))
    elif old:
        print("nothing removed: add --prune to remove them")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # its output piped into head, say
        sys.stderr.close()
        sys.exit(0)
