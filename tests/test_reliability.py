"""Bad input is refused before anything runs; bad data, crashes, full disks and concurrent jobs
lose nothing; secrets are never written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from types import SimpleNamespace

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignsweep.results import rundir
from alignsweep.data import pairs


# --- refused before anything runs (exit code 2, the key named, no traceback) ------------------


@pytest.mark.parametrize("group,bad", [("algo", "ppo"), ("model", "gpt5"), ("data", "imdb"), ("judge", "oracle")])
def test_unknown_option_of_a_group(cli, group, bad):
    for args in ([f"{group}={bad}", "dry_run=true"], ["-m", f"{group}={bad}", "dry_run=true"]):
        proc = cli(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"Could not find '{group}/{bad}'" in proc.stderr and f"Available options in '{group}'" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_data_file_without_the_needed_columns(cli, tmp_path):
    # a missing prompt column is an implicit prompt (tests/test_real_input.py); chosen/rejected are needed
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"question": "q", "good": "a", "rejected": "b"}) + "\n")
    real = ("data=tldr", "model=pythia_1b", "judge=llm")
    proc = cli(*real, f"data.path={data}", "dry_run=true", check=False)
    assert proc.returncode == 2
    assert f"data.path: {data} (split train) has no column(s) chosen (found: question, good, rejected)" in proc.stderr
    proc = cli(*real, "data.path=/no/such/data", "dry_run=true", check=False)
    assert proc.returncode == 2 and "data.path: /no/such/data does not exist" in proc.stderr
    ok = cli(*real, f"data.path={data}", "data.prompt_column=question", "data.chosen_column=good", "dry_run=true")
    assert "data=tldr" in ok.stdout


def test_tokenizer_that_cannot_pad(cli, tmp_path):
    from alignsweep.train import models
    from alignsweep.data import embedded

    folder = tmp_path / "model"
    tok = models.build_word_tokenizer(embedded.vocabulary(5, 2).tokens)
    tok.save_pretrained(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.exists():
            data = json.loads(path.read_text())
            for key in ("pad_token", "eos_token"):
                data.pop(key, None)
            path.write_text(json.dumps(data))
    proc = cli("model=pythia_1b", f"model.path={folder}", "dry_run=true", check=False)
    assert proc.returncode == 2
    assert "has neither a pad_token nor an eos_token" in proc.stderr and str(folder) in proc.stderr


def test_unwritable_output_directory(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["paths.output_dir=" + str(blocker / "out")], ["-m", f"hydra.sweep.dir={blocker}/sweep"]):
        proc = cli(*args, "dry_run=true", check=False)
        assert proc.returncode == 2 and f"{blocker} is a file, not a directory" in proc.stderr


# --- bad data rows ------------------------------------------------------------------------


def _word_tokenizer():
    from alignsweep.train import models
    from alignsweep.data import embedded

    return models.build_word_tokenizer(embedded.vocabulary(24, 6).tokens)


def test_bad_rows_are_counted_dropped_and_mostly_bad_data_stops_the_run(tmp_path):
    from alignsweep.worker.task import load_task

    words = "apple river stone cloud maple tiger violin copper garden harbor".split()
    good = [{"prompt": f"summarize: {words[i % 10]} =>", "chosen": f" apple river{' very' * (i % 3)}",
             "rejected": " tiger"} for i in range(30)]
    bad = [
        {"prompt": "summarize: apple =>", "chosen": "  ", "rejected": " apple"},  # empty
        {"prompt": "summarize: apple =>", "chosen": " apple", "rejected": " apple"},  # identical
        {"prompt": "summarize: apple =>", "chosen": 3, "rejected": " apple"},  # not text
        {"prompt": "summarize: apple =>", "chosen": " apple" * 80, "rejected": " river"},  # too long
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad) + "{broken json\n")
    cfg = SimpleNamespace(seed=0, model=SimpleNamespace(name="local"), data=SimpleNamespace(
        embedded=None, path=str(path), hub_id=None, name="local", prompt_column="prompt", chosen_column="chosen",
        rejected_column="rejected", max_length=40, heldout_size=8, max_bad_fraction=0.5, split=None,
        heldout_split=None, chat_template="auto", sft_path=None, sft_hub_id=None), sft=SimpleNamespace(enabled=True))
    task = load_task(cfg, _word_tokenizer())
    assert task["report"]["train"] == {
        "total": 35, "kept": 30,
        "dropped": {"empty_response": 1, "identical": 1, "non_text": 1, "too_long": 1, "unreadable": 1},
    }
    # held out by prompt: whole prompts (3 pairs each) until 8 pairs are out
    assert len(task["train"]) == 21 and len(task["heldout"]) == 9 and len(task["eval"]) == 3
    assert not {r["prompt"] for r in task["train"]} & {r["prompt"] for r in task["heldout"]}
    path.write_text("".join(json.dumps(r) + "\n" for r in good[:3] + bad * 2))
    with pytest.raises(pairs.DataError, match=r"8 of 11 rows are unusable .*data.max_bad_fraction=0.5"):
        load_task(cfg, _word_tokenizer())


text = st.text(max_size=30)
value = st.one_of(text, st.integers(), st.none(), st.floats(allow_nan=True), st.lists(text, max_size=2))
row = st.one_of(
    st.fixed_dictionaries({"prompt": value, "chosen": value, "rejected": value}),
    st.dictionaries(st.text(max_size=8), value, max_size=4),
    value,
)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(row, max_size=20))
def test_cleaning_never_crashes_and_never_drops_a_good_row(rows):
    kept, report = pairs.clean_pairs(rows)
    expected, seen = [], set()
    for r in rows:
        if isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("prompt", "chosen", "rejected")) \
                and r["prompt"].strip() and r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]:
            key = (r["prompt"], r["chosen"], r["rejected"])
            if key not in seen:  # exact duplicates are dropped and counted
                seen.add(key)
                expected.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]})
    # rows with a prompt column keep it as it is; rows without one may be kept with an implicit prompt
    assert [k for k in kept if k in expected] == expected
    assert report.total == len(rows) and report.kept + sum(report.dropped.values()) == len(rows)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=300), good_rows=st.lists(st.integers(0, 1000), max_size=5))
def test_metrics_reader_survives_any_bytes_and_keeps_every_good_line(tmp_path_factory, garbage, good_rows):
    run = tmp_path_factory.mktemp("run")
    lines = [json.dumps({"step": s, "win_rate": 0.5}).encode() + b"\n" for s in good_rows]
    junk = garbage.replace(b"\n", b" ") + b"\n"
    (run / rundir.METRICS).write_bytes(b"".join(lines[:2]) + junk + b"".join(lines[2:]))
    problems: list[str] = []
    rows = rundir.read_metrics(run, problems)
    good = [r["step"] for r in rows if r == {"step": r["step"], "win_rate": 0.5}]
    assert good[:2] == good_rows[:2] and good[-len(good_rows[2:]) or len(good):] == good_rows[2:]
    assert len(rows) + len(problems) <= len(good_rows) + 1


# --- full disks, crashed builders, concurrent jobs ----------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 64 KiB filesystem (tmpfs), to fill up."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)])


def test_a_full_disk_leaves_nothing_half_written(tiny_fs):
    rundir.write_status(tiny_fs, state="running", step=1)
    rundir.append_metrics(tiny_fs, {"step": 0, "win_rate": 0.5})
    with pytest.raises(OSError, match=f"cannot write {tiny_fs / rundir.STATUS}"):
        rundir.write_status(tiny_fs, state="running", blob="x" * 200_000)
    with pytest.raises(OSError, match=f"cannot write {tiny_fs / rundir.METRICS}"):
        for step in range(1, 10_000):
            rundir.append_metrics(tiny_fs, {"step": step, "pad": "y" * 500})
    assert rundir.read_status(tiny_fs)["step"] == 1  # the previous status is intact
    assert sorted(p.name for p in tiny_fs.iterdir()) == [rundir.METRICS, rundir.STATUS]  # no temp files
    rows = rundir.read_metrics(tiny_fs)  # every complete line, the cut-off one skipped
    assert rows[0] == {"step": 0, "win_rate": 0.5} and [r["step"] for r in rows] == list(range(len(rows)))


def test_sft_is_built_once_by_concurrent_jobs_and_a_crashed_build_is_not_used(cli, tmp_path):
    cache = tmp_path / "cache"
    sft_root = cache / "sft"
    sft_root.mkdir(parents=True)
    args = ["logger=none", f"paths.cache_dir={cache}", "sft.epochs=1", "data.embedded.n_train=256"]
    # a builder that crashed earlier left a partial folder behind
    from alignsweep.train.sft import sft_key
    from tests.test_config import compose_cfg

    key = sft_key(compose_cfg(*args[1:]))
    (sft_root / f"{key}.partial").mkdir()
    (sft_root / f"{key}.partial" / "model.safetensors").write_text("half-written")
    procs = [cli.popen(*args, f"hydra.run.dir=run{i}") for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum(o.count("building the SFT model") for o in outputs) == 1
    assert sorted(p.name for p in sft_root.iterdir() if not p.name.endswith(".lock")) == [key]
    assert (sft_root / key / "DONE").exists()


def test_jobs_with_and_without_activation_checkpointing_share_one_sft_model():
    """model.gradient_checkpointing changes memory, not the SFT model: one cache key for both (the
    key of a job without it unchanged), while what does change the model still changes the key."""
    from alignsweep.train.sft import sft_key
    from tests.test_config import compose_cfg

    off = sft_key(compose_cfg("model.gradient_checkpointing=false"))
    assert sft_key(compose_cfg("model.gradient_checkpointing=true")) == off
    assert sft_key(compose_cfg("sft.epochs=1")) != off and sft_key(compose_cfg("sft.lr=1e-4")) != off


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_as_diverged(cli):
    proc = cli("logger=none", "train.lr=1e12", "hydra.run.dir=run", check=False)
    assert proc.returncode == 1
    status = rundir.read_status(cli.cwd / "run")
    assert status["state"] == "diverged" and status["stop_reason"] == "non_finite_loss"
    assert 0 < status["step"] < status["total_steps"]
    cli("collect", str(cli.cwd / "run"))
    assert "diverged" in (cli.cwd / "run" / "results.csv").read_text()


# --- secrets --------------------------------------------------------------------------------


@pytest.mark.slow
def test_api_keys_never_reach_any_file_a_run_writes(cli):
    secret = "sk-alignsweep-test-" + "9f3a7c1e5b" * 3
    # a small job (every kind of file a job writes, a trainer checkpoint included)
    cli("-m", "algo=dpo", "logger=wandb", "logger.mode=offline", "hydra.sweep.dir=sweep", "data.embedded.n_train=256",
        "eval.prompts=32", "train.checkpoints=2", env={"WANDB_API_KEY": secret, "OPENAI_API_KEY": secret})
    written = [p for p in (cli.cwd / "sweep").rglob("*") if p.is_file()]
    assert len(written) > 10
    leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
    assert not leaks, f"the API key was written to {leaks}"


# --- chaos ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_chaos_killed_jobs_and_launchers_then_a_grown_grid_end_as_an_undisturbed_sweep(cli):
    """Jobs and the launcher itself killed at random moments (SIGKILL or SIGTERM), then the sweep
    relaunched with one more job: it ends with the table of an undisturbed sweep of the grown grid,
    no job trained twice over, every exit code non-zero until then."""
    small = ["logger=none", "data.embedded.n_train=1024", "eval.prompts=64", "train.checkpoints=4"]
    grid, grown = ["-m", "algo=dpo,ipo", *small], ["-m", "algo=dpo,ipo,slic", *small]
    cli(*grown, "hydra.sweep.dir=calm")
    storm = cli.cwd / "storm"
    rng = random.Random(20261122)
    kills, codes = [], []
    for attempt in range(10):
        proc = cli.popen(*(grid if attempt < 3 else grown), "hydra.sweep.dir=storm")
        if attempt < 3:
            # wait for a job to be training, then kill it or the launcher a random moment later
            deadline, victim = time.time() + 300, None
            while victim is None and time.time() < deadline and proc.poll() is None:
                runs = [d for d in storm.glob("*") if (d / rundir.CONFIG).exists()]
                training = [(d, s) for d in runs if (s := rundir.read_status(d))
                            and s.get("state") == "running" and s.get("phase") in ("train", "eval")]
                victim = rng.choice(training) if training else None
                time.sleep(0.2)
            if victim is not None:
                # a moment later, well inside the second or two a tiny job trains on a quiet machine
                time.sleep(rng.uniform(0.0, 0.5))
                run, status = victim
                sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
                target = rng.choice(["job", "launcher"])
                for who, pid in ((target, status["pid"] if target == "job" else proc.pid), ("launcher", proc.pid)):
                    try:  # a job that finished meanwhile: its launcher (still collecting) is hit instead
                        os.kill(pid, sig)
                        kills.append((attempt, who, run.name, sig.name, status.get("phase"), status.get("step")))
                        break
                    except ProcessLookupError:
                        continue
        proc.communicate(timeout=600)
        codes.append(proc.returncode)
        states = {d.name: (rundir.read_status(d) or {}).get("state") for d in storm.glob("*")
                  if (d / rundir.CONFIG).exists()}
        # done when a relaunch finds all three completed and says so (0); a relaunch that found a job
        # still run by the orphan of a killed launcher says 3 (left to a live process) even when that
        # job completes meanwhile, and the next relaunch must then say 0
        if attempt >= 3 and codes[-1] == 0 and len(states) == 3 and all(s == "completed" for s in states.values()):
            break
    assert kills, "the chaos test killed nothing"
    assert all(s == "completed" for s in states.values()) and len(states) == 3, (states, kills)
    assert codes[-1] == 0 and all(codes[k[0]] != 0 for k in kills), (codes, kills)  # exit codes tell the truth
    calm_table, storm_table = (pd.read_csv(cli.cwd / d / "results.csv") for d in ("calm", "storm"))
    keep = [c for c in calm_table.columns if not c.startswith("cfg.") and c not in ("wall_s",)]
    key = ["algo", "step"]
    calm_rows = calm_table[keep].sort_values(key).reset_index(drop=True)
    storm_rows = storm_table[keep].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(calm_rows.drop(columns=["run"]), storm_rows.drop(columns=["run"]), obj=str(kills))


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(row, max_size=20), max_length=st.integers(0, 40))
def test_the_length_check_drops_exactly_the_rows_too_long(rows, max_length):
    def lengths(prompts, completions):  # one call for all of them: characters here, tokens in a job
        return [len(p) + len(c) for p, c in zip(prompts, completions)]

    everything, _ = pairs.clean_pairs(rows)
    kept, report = pairs.clean_pairs(rows, lengths=lengths, max_length=max_length)
    fits = [r for r in everything
            if len(r["prompt"] + r["chosen"]) <= max_length and len(r["prompt"] + r["rejected"]) <= max_length]
    assert kept == fits
    assert report.dropped.get("too_long", 0) == len(everything) - len(fits)
    assert report.kept + sum(report.dropped.values()) == len(rows)


def test_token_lengths_are_each_prompt_and_completion_tokenised_as_training_does():
    from alignsweep.train import models
    from alignsweep.data import embedded

    tokenizer = models.build_word_tokenizer(embedded.vocabulary(24, 6).tokens)
    words = embedded.vocabulary(24, 6).tokens
    prompts = ["", " a b", "x y z"] + [" ".join(words[:k]) for k in range(1, 9)]
    completions = [" apple", " river stone", ""] + [" " + " ".join(words[5:5 + k]) for k in range(1, 9)]
    expected = [len(tokenizer(p + c + tokenizer.eos_token)["input_ids"]) for p, c in zip(prompts, completions)]
    assert pairs.token_lengths(tokenizer)(prompts, completions) == expected and max(expected) > 5