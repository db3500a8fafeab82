"""What every job of a sweep prepares identically is prepared once: the cleaned splits and TRL's
tokenised pairs (`data.share_prepared`) and the reference's log-probs of the held-out pairs
(`train.share_ref_logps`). A job that reads them writes exactly the rows it would have computed."""

from __future__ import annotations

import math

import pytest

from alignsweep import rundir

SMALL = ["data.embedded.n_train=64", "eval.prompts=48", "logger=none", "train.checkpoints=1"]
OFF = ["data.share_prepared=false", "train.share_ref_logps=false", "eval.share_step0=false"]


def _run(cli, name: str, *args: str) -> tuple[list[dict], dict]:
    cli(*args, *SMALL, f"hydra.run.dir={cli.cwd / name}")
    return rundir.read_metrics(cli.cwd / name), rundir.read_status(cli.cwd / name)


@pytest.mark.slow
def test_a_job_reading_the_shared_data_writes_the_rows_it_would_have_computed(cli, tmp_path):
    # the session's SFT model (label noise changes the pairs, not the SFT split); pairs no other
    # test uses, so that nothing of theirs is in the cache yet
    cache = "data.embedded.label_noise=0.111"
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
    from alignsweep import models
    from alignsweep.data import embedded
    from alignsweep.shared_data import task_cache_path, tokenizer_fingerprint
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
