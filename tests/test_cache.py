"""`python -m alignsweep cache`: the shared cache's entries (made by the real sharing functions),
marked used when jobs read them, pruned by age, never while a job holds an entry's lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

from alignsweep.train import sft

from alignsweep.cache import store as sweep_cache

DAY = 86400


def cache_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignsweep", "cache", *args], capture_output=True, text=True, timeout=120)


def age(path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def make_sft(cfg, tokenizer):
    from alignsweep.train import models

    arch = SimpleNamespace(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=64)
    return sft.ensure_sft(cfg, {}, lambda: models.build_tiny_model(arch, tokenizer, 0), tokenizer, {"use_cpu": True})


def test_entries_are_marked_used_listed_and_pruned_by_age_unless_locked(tmp_path):
    from filelock import FileLock

    from alignsweep.train import models
    from alignsweep.data import embedded
    from tests.test_config import compose_cfg

    cache = tmp_path / "cache"
    made = []

    def compute(value):
        made.append(value)
        return {"value": value}

    step0 = {name: cache / "step0" / f"{name}.pt" for name in ("old", "read", "locked", "new")}
    for name, path in step0.items():
        assert sweep_cache.load_or_compute(path, lambda n=name: compute(n), all_ranks=False) == ({"value": name}, False)
    parts = cache / "ref_logps" / "parts"
    values, computed = sweep_cache.load_or_compute_parts(parts, 3, lambda i: torch.full((2,), float(i)))
    assert computed == 3
    cfg = compose_cfg(f"paths.cache_dir={cache}", "sft.enabled=false")
    tokenizer = models.build_word_tokenizer(embedded.vocabulary(24, 6).tokens)
    model_dir = make_sft(cfg, tokenizer)
    for path in (*step0.values(), parts, model_dir):
        if path != step0["new"]:
            age(path, 40)

    # reading marks an entry used: the entry read, the parts read, the SFT model found
    assert sweep_cache.load_or_compute(step0["read"], lambda: compute("again"), all_ranks=False) == ({"value": "read"}, True)
    assert sweep_cache.load_or_compute_parts(parts, 3, lambda i: compute(i))[1] == 0
    assert make_sft(cfg, tokenizer) == model_dir
    assert made == ["old", "read", "locked", "new"]  # nothing computed again
    for path in (step0["read"], parts, model_dir):
        assert time.time() - path.stat().st_mtime < DAY

    listing = cache_cli(str(cache))
    assert listing.returncode == 0, listing.stderr
    assert f"{cache}: 6 entries" in listing.stdout
    assert "step0" in listing.stdout and "4 entries" in listing.stdout and "sft" in listing.stdout

    age(step0["read"], 40)  # the two old ones now, and the one whose lock a job holds
    age(parts, 40)
    dry = cache_cli(str(cache), "--unused-for", "30")
    assert dry.returncode == 0, dry.stderr
    assert "unused for 30 days or more: 4 entries" in dry.stdout and "would be removed" in dry.stdout
    assert all(p.exists() for p in (*step0.values(), parts, model_dir))

    lock = FileLock(str(sweep_cache.lock_path(step0["locked"])))
    lock.acquire()  # a job computing it (the lock held, here)
    try:
        pruned = cache_cli(str(cache), "--unused-for", "30", "--prune")
    finally:
        lock.release()
    assert pruned.returncode == 0, pruned.stderr
    assert "step0/locked" in pruned.stdout and "in use by a job: kept" in pruned.stdout
    assert "freed" in pruned.stdout
    assert not step0["old"].exists() and not step0["read"].exists() and not parts.exists()
    assert step0["locked"].exists() and step0["new"].exists() and (model_dir / "DONE").exists()

    # a job that finds its entry gone computes it again
    assert sweep_cache.load_or_compute(step0["old"], lambda: compute("old"), all_ranks=False) == ({"value": "old"}, False)


def test_mistakes_are_one_line_and_exit_2(tmp_path):
    for args, expected in (
        ([str(tmp_path), "--prune"], "--prune needs --unused-for"),
        ([str(tmp_path / "nowhere")], "no cache at"),
        ([str(tmp_path), "--unused-for", "-1"], "--unused-for: expected a number of days >= 0"),
    ):
        proc = cache_cli(*args)
        assert proc.returncode == 2 and expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
