"""Judges: the reward-model judge on tiny reward models saved locally, verdict parsing, the judge
checks of alignsweep.config.resolve, and win rates with unparseable verdicts through the evaluator."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForSequenceClassification

from alignsweep.train import models
from alignsweep.data import embedded
from alignsweep.evaluate.judges import GoldJudge, build_judge
from alignsweep.evaluate.judges.llm import parse_verdict
from alignsweep.evaluate.judges.prompts import render
from alignsweep.errors import ConfigError
from alignsweep.config.resolve import resolve_job
from alignsweep.config.schema import JudgeConfig, register

CONF = Path(__file__).resolve().parents[1] / "conf"
register()

WORDS = ["good", "fine", "meh", "poor", "bad", "the", "answer", "is", "question", "?"]
VALUE = {"good": 0.9, "fine": 0.5, "meh": 0.0, "poor": -0.5, "bad": -0.9}  # reward of a text ending in the word


def word_tokenizer():
    return models.build_word_tokenizer([embedded.PAD, embedded.EOS, embedded.UNK, *WORDS])


def tiny_reward_model(tok, seed: int = 0) -> LlamaForSequenceClassification:
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=1, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config).eval()


def rm_judge(path, **kw):
    cfg = OmegaConf.merge(OmegaConf.structured(JudgeConfig), {"name": "reward_model", "model": str(path), **kw})
    return build_judge(cfg)


@pytest.fixture(scope="module")
def known_rm(tmp_path_factory):
    """A reward model whose reward is a known function: the value of the text's last word.

    The layers add nothing to the residual stream (output projections zeroed), so the hidden state at
    the last token is its embedding; each word's embedding is a unit vector at an angle whose cosine
    is the word's value, RMSNorm scales it by sqrt(d), and the score head reads coordinate 0 / sqrt(d).
    """
    tok = word_tokenizer()
    model = tiny_reward_model(tok)
    d = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        for token_id in range(len(tok)):
            word = tok.convert_ids_to_tokens(token_id)
            value = VALUE.get(word, 0.0)
            emb[token_id, 0], emb[token_id, 1] = value, math.sqrt(1 - value**2)
        model.model.norm.weight.fill_(1.0)
        model.score.weight.zero_()
        model.score.weight[0, 0] = 1 / math.sqrt(d)
    path = tmp_path_factory.mktemp("known-rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def random_rm(tmp_path_factory):
    tok = word_tokenizer()
    path = tmp_path_factory.mktemp("random-rm")
    tiny_reward_model(tok, seed=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_model_scores_are_the_known_function_and_decide_the_comparison(known_rm):
    judge = rm_judge(known_rm, batch_size=2)
    prompts = ["the question ?", "question ?", "the question is the question ?", "question ?", "question ?"]
    samples = [" the answer is good", " bad", " fine", " the answer is meh", " poor"]
    references = [" bad", " the answer is good", " meh", " meh", " the answer is poor"]
    scores = judge.scores(prompts, samples)
    assert scores == pytest.approx([0.9, -0.9, 0.5, 0.0, -0.5], abs=1e-4)
    result = judge.evaluate(prompts, samples, references)
    assert result.outcomes == [1.0, 0.0, 1.0, 0.5, 0.5]  # higher reward wins; equal rewards tie
    assert result.metrics["rm_reward"] == pytest.approx(sum(scores) / 5, abs=1e-6)
    assert result.metrics["rm_reward_reference"] == pytest.approx((-0.9 + 0.9 + 0.0 + 0.0 - 0.5) / 5, abs=1e-4)


def test_reward_model_batches_score_as_one_by_one(random_rm):
    prompts = ["the question ?"] * 3 + ["question ?"] * 4
    responses = [" good", " the answer is bad", " meh meh meh meh fine", " is", " the the the answer", " poor", " ?"]
    batched = rm_judge(random_rm, batch_size=3).scores(prompts, responses)
    alone = rm_judge(random_rm, batch_size=1).scores(prompts, responses)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 4) for s in alone)) > 3  # a real, varied reward, not a constant


def test_reward_model_judge_is_refused_without_a_model_or_with_a_bad_one(tmp_path):
    with pytest.raises(ConfigError, match="^judge.model"):
        build_judge(OmegaConf.merge(OmegaConf.structured(JudgeConfig), {"name": "reward_model"}))
    with pytest.raises(ConfigError, match="^judge.model: cannot load"):
        rm_judge(tmp_path / "missing")


def test_evaluator_with_the_reward_model_judge(random_rm):
    """A full checkpoint evaluation judged by a reward model: its metrics land in the row."""
    from alignsweep.evaluate.evaluator import Evaluator

    tok = word_tokenizer()
    arch = SimpleNamespace(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=32)
    policy = models.build_tiny_model(arch, tok, seed=0).eval()
    judge = rm_judge(random_rm, batch_size=4)
    rows = [{"prompt": "the question ?", "reference": " the answer is good"}, {"prompt": "question ?", "reference": " bad"}] * 5
    ev = Evaluator(ref_model=policy, tokenizer=tok, judge=judge, eval_rows=rows, heldout_rows=[], loss_name="dpo",
                   loss_params={"beta": 0.1}, max_new_tokens=4, temperature=1.0, batch_size=4, seed=0)
    row = ev.evaluate(policy, step=0)
    assert row["n_eval"] == 10 and row["unparseable"] == 0 and 0 <= row["win_rate"] <= 1
    assert {"rm_reward", "rm_reward_reference", "kl_exact_token"} <= set(row) and "gold_reward" not in row
    from .test_evaluation import assert_length_controlled

    assert_length_controlled(row, ev.last_samples)


def test_gold_judge_reports_the_gold_reward():
    prompt = embedded.prompt_text(["apple", "river"])
    result = GoldJudge().evaluate([prompt] * 3, [" apple river", " apple", " apple river"], [" apple", " apple", " river very"])
    assert result.outcomes == [1.0, 0.5, 1.0]
    assert result.metrics["gold_reward"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert GoldJudge().compare([prompt], [" apple"], [" apple river"]) == [0.0]


@pytest.mark.parametrize(
    "content,verdict",
    [
        ("Comparison: A is shorter.\nPreferred: A", "A"),
        ("Comparison: B covers more.\nMore helpful: B", "B"),
        ("Comparison: ...\n**Preferred:** \"B\"", "B"),
        ("Comparison: x\nPreferred: Summary A", "A"),
        ("Preferred: A\n...on reflection...\nPreferred: B", "B"),  # the last verdict counts
        ("Comparison: both are fine\nPreferred: Tie", "tie"),
        ("B", "B"),
        ("'A'.", "A"),
        ("Comparison: neither is great but\nB", "B"),
        ("Comparison: hard to say.\nPreferred: A or B", None),  # not guessed
        ("Comparison: hard to say.\nPreferred: a longer one", None),
        ("Comparison: Summary A is better", None),  # no verdict line
        ("Comparison: x\nPreferred:", None),
        ("I would need more context.", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(content, verdict):
    assert parse_verdict(content) == verdict


def test_prompts_are_filled_in_one_pass():
    text = render("Q: {prompt}\nA: {first}\nB: {second}", prompt="say {second}", first="{prompt}", second="x")
    assert text == "Q: say {second}\nA: {prompt}\nB: x"


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["judge=llm", "judge.base_url=null"], "judge.base_url"),
        (["judge=llm", "judge.base_url=api.openai.com"], "judge.base_url"),
        (["judge=llm", "judge.prompt=poem"], "judge.prompt"),
        (["judge=llm", "judge.order=alphabetical"], "judge.order"),
        (["judge=llm", "judge.concurrency=0"], "judge.concurrency"),
        (["judge=reward_model"], "judge.model"),
        (["judge=reward_model", "judge.model=/no/such/reward/model"], "judge.model"),
        (["judge.name=oracle"], "judge.name"),
    ],
)
def test_judge_settings_are_checked_with_the_key_named(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve_job(compose_cfg(*overrides))
    assert str(err.value).startswith(key)


def test_a_dry_run_needs_no_api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = compose_cfg("judge=llm")
    assert resolve_job(cfg).algo == "dpo"
    assert cfg.judge.api_key_env == "OPENAI_API_KEY" and cfg.judge.model == "gpt-4-turbo-2024-04-09"
    assert resolve_job(compose_cfg("judge=reward_model", "judge.model=OpenAssistant/reward-model-deberta-v3-large-v2"))
