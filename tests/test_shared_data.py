"""What every job of a sweep prepares identically is prepared once: the cleaned splits and TRL's
tokenised pairs (`data.share_prepared`) and the reference's log-probs of the held-out pairs
(`train.share_ref_logps`). A job that reads them writes exactly the rows it would have computed."""

from __future__ import annotations

import math

import pytest

from alignsweep.results import rundir

SMALL = ["data.embedded.n_train=64", "eval.prompts=48", "logger=none", "train.checkpoints=1"]
OFF = ["data.share_prepared=false", "train.share_ref_logps=false", "eval.share_step0=false"]


def _run(cli, name: str, *args: str) -> tuple[list[dict], dict]:
    cli(*args, *SMALL, f"hydra.run.dir={cli.cwd / name}")
    return rundir.read_metrics(cli.cwd / name), rundir.read_status(cli.cwd / name)


@pytest.mark.slow
def test_a_job_reading_the_shared_data_writes_the_rows_it_would_have_computed(cli, tmp_path):
    # the session's SFT model (label noise changes the pairs, not the SFT split); pairs no other
    # test uses, so that nothing of theirs is in the cache yet
    cache = "data.embedded.label_noise=0.177"
    alone, status = _run(cli, "alone", "algo=dpo", *OFF, cache)
    assert not {"data_splits", "data_tokenised", "ref_logps", "heldout_ref_logps"} & set(status)
    _, first = _run(cli, "first", "algo=ipo", cache)
    for key in ("data_splits", "data_tokenised", "ref_logps", "heldout_ref_logps"):
        assert first[key] == "computed", key
    shared, second = _run(cli, "second", "algo=dpo", cache)
    for key in ("data_splits", "data_tokenised", "ref_logps", "heldout_ref_logps"):
        assert second[key] == "read from the sweep's cache", key
    assert second["data"] == status["data"]  # the same rows kept and dropped
    # where each job's time went: every phase it paid for, within its wall time
    phases = {"data", "sft", "load_models", "heldout_ref_logps", "tokenise", "ref_logps", "trainer_setup", "step0",
              "eval", "train"}
    for job in (status, first, second):
        assert set(job["seconds"]) == phases and min(job["seconds"].values()) >= 0.0, job["seconds"]
        assert sum(job["seconds"].values()) <= job["wall_s"] and job["waited_s"] >= 0.0
    assert second["seconds"]["step0"] < first["seconds"]["step0"]  # read, not measured
    assert [r["step"] for r in shared] == [r["step"] for r in alone]
    for a, b in zip(alone, shared):
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(b[key]), key
            else:  # computed the same way shared or not: the same numbers, to the last bit
                assert b[key] == value, key
    # other data: other files, computed again
    _, other = _run(cli, "other", "algo=dpo", "data.embedded.label_noise=0.4")
    assert other["data_splits"] == other["data_tokenised"] == "computed"


def test_the_data_key_follows_the_data_the_tokenizer_and_the_files(tmp_path):
    from alignsweep.train import models
    from alignsweep.data import embedded
    from alignsweep.data.shared import task_cache_path, tokenizer_fingerprint
    from tests.test_config import compose_cfg

    tok = models.build_word_tokenizer(embedded.vocabulary(24, 6).tokens)
    other_tok = models.build_word_tokenizer(embedded.vocabulary(25, 6).tokens)
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(models.build_word_tokenizer(embedded.vocabulary(24, 6).tokens))
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(other_tok)

    base = compose_cfg(f"paths.cache_dir={tmp_path}")
    key = task_cache_path(base, tok)
    assert key == task_cache_path(compose_cfg(f"paths.cache_dir={tmp_path}", "data.share_prepared=false"), tok)
    assert key != task_cache_path(compose_cfg(f"paths.cache_dir={tmp_path}", "data.max_length=48"), tok)
    assert key != task_cache_path(base, other_tok)

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n')
    local = compose_cfg(f"paths.cache_dir={tmp_path}", "data=tldr", f"data.path={data}")
    before = task_cache_path(local, tok)
    data.write_text('{"prompt": "a", "chosen": " b", "rejected": " dd"}\n')
    assert task_cache_path(local, tok) != before  # an edited file is prepared again


def test_the_reference_key_follows_every_token_id_and_ignores_how_rows_are_stored():
    """The key of shared reference log-probs hashes the token ids: rows kept by a filter hash like
    the same rows built directly; ids moved between rows or columns change it."""
    import hashlib

    from datasets import Dataset

    from alignsweep.train.trainer import _token_ids_digest

    def key(rows: list[dict]) -> str:
        return _token_ids_digest(hashlib.sha256(), Dataset.from_list(rows), ("a", "b"))

    rows = [{"a": [1, 2, 3], "b": [4]}, {"a": [], "b": [5, 6]}, {"a": [7], "b": [8]}]
    filtered = Dataset.from_list(rows).filter(lambda r: len(r["a"]) > 0)
    assert _token_ids_digest(hashlib.sha256(), filtered, ("a", "b")) == key([rows[0], rows[2]])
    assert key(rows) != key([rows[0], rows[2]])
    assert key([{"a": [1, 2], "b": [3, 4]}]) != key([{"a": [1, 2, 3], "b": [4]}])  # the boundary moved
    assert key([{"a": [1, 2], "b": [3, 4]}]) != key([{"a": [3, 4], "b": [1, 2]}])  # the columns swapped
    assert key(rows[:2]) != key([rows[0], rows[0]])


def test_the_tokenised_data_key_follows_the_rows_and_ignores_how_they_are_stored(tmp_path):
    """TRL's tokenised pairs are keyed by the rows (hashed in Arrow), the tokenizer and the
    settings: rows kept by a filter or concatenated from parts key like the same rows built at
    once; an edited row, another tokenizer or another max_length change the key."""
    from types import SimpleNamespace

    from datasets import Dataset, concatenate_datasets

    from alignsweep.train import models
    from alignsweep.data import embedded
    from alignsweep.data.shared import tokenised_cache_path

    tok = models.build_word_tokenizer(embedded.vocabulary(24, 6).tokens)
    args = SimpleNamespace(max_length=64, truncation_mode="keep_end")
    rows = [{"prompt": f"p{i}", "chosen": f" c{i}", "rejected": f" r{i}"} for i in range(50)]

    def key(dataset, tokenizer=tok, settings=args):
        return tokenised_cache_path(tmp_path, dataset, tokenizer, settings)

    whole = key(Dataset.from_list(rows))
    assert key(Dataset.from_list(rows + [{"prompt": "x", "chosen": "", "rejected": " y"}]).filter(lambda r: r["chosen"])) == whole
    assert key(concatenate_datasets([Dataset.from_list(rows[:20]), Dataset.from_list(rows[20:])])) == whole
    edited = [dict(r) for r in rows]
    edited[17]["rejected"] = " r17 "
    assert key(Dataset.from_list(edited)) != whole
    assert key(Dataset.from_list(rows[:49])) != whole
    assert key(Dataset.from_list(rows), models.build_word_tokenizer(embedded.vocabulary(25, 6).tokens)) != whole
    assert key(Dataset.from_list(rows), settings=SimpleNamespace(max_length=32, truncation_mode="keep_end")) != whole


def test_reference_columns_built_in_arrow_equal_datasets_add_column():
    """`_with_ref_columns` (Arrow) gives the dataset `Dataset.add_column` of the same values gives:
    rows, types and format; over a filtered dataset, and replacing a column already there."""
    import torch
    from datasets import Dataset

    from alignsweep.train.trainer import DAATrainer

    rows = Dataset.from_list([{"p": [1, 2], "x": 1.0}, {"p": [3], "x": 2.0}, {"p": [4, 5], "x": 3.0}])
    kept = rows.filter(lambda r: r["x"] != 2.0)
    values = {"ref_chosen_logps": torch.tensor([-1.5, -2.25]), "x": torch.tensor([7.0, 8.0])}
    new = DAATrainer._with_ref_columns(kept, values)
    old = kept
    for column, column_values in values.items():
        if column in old.column_names:
            old = old.remove_columns(column)
        old = old.add_column(column, column_values.tolist())
    assert new.to_dict() == old.to_dict() == {"p": [[1, 2], [4, 5]], "x": [7.0, 8.0], "ref_chosen_logps": [-1.5, -2.25]}
    assert new.features == old.features and new.format == old.format and new[1] == old[1]


@pytest.mark.slow
def test_a_job_goes_on_while_another_scores_the_heldout_pairs_and_reads_them_later(cli, sft_cache):
    """The reference's held-out log-probs another job is still scoring are read at first use, not
    waited for while the job has other work: it tokenises and prepares its training meanwhile, and
    writes exactly the rows of a job that read them at once."""
    import os
    import time

    from filelock import FileLock

    from alignsweep.cache.store import lock_path

    noise = "data.embedded.label_noise=0.222"  # pairs of this test's own
    _, first = _run(cli, "first", "algo=dpo", noise)
    assert first["heldout_ref_logps"] == "computed"
    heldout = max((sft_cache / "ref_logps").glob("heldout-*.pt"), key=os.path.getmtime)
    saved = heldout.read_bytes()
    heldout.unlink()
    lock = FileLock(str(lock_path(heldout)))
    lock.acquire()  # "another job" is scoring them
    run = cli.cwd / "later"
    proc = cli.popen("algo=ipo", noise, *SMALL, f"hydra.run.dir={run}", stdout=cli.cwd / "later.out")
    deadline = time.time() + 300
    while "ref_logps" not in (rundir.read_status(run) or {}):  # set up its training past the evaluator
        assert proc.poll() is None and time.time() < deadline, (cli.cwd / "later.out").read_text()
        time.sleep(0.2)
    assert "heldout_ref_logps" not in rundir.read_status(run)  # not read yet
    tmp = heldout.with_name(".tmp-heldout")
    tmp.write_bytes(saved)
    os.replace(tmp, heldout)
    lock.release()
    assert proc.wait(timeout=300) == 0, (cli.cwd / "later.out").read_text()
    later = rundir.read_status(run)
    assert later["heldout_ref_logps"] == "read from the sweep's cache" and later["waited_s"] > 0
    direct, _ = _run(cli, "direct", "algo=ipo", noise)
    assert rundir.read_metrics(run) == direct
