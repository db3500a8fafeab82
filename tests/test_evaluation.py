"""Evaluation maths on a real tiny model: log-probs, unbiased sampling, the KL estimate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from alignsweep.train import models
from alignsweep.data import embedded
from alignsweep.evaluate.evaluator import Evaluator
from alignsweep.evaluate.sequences import make_batch, mean_se, sample, sequence_logps
from alignsweep.evaluate.judges import GoldJudge

ARCH = SimpleNamespace(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny():
    vocab = embedded.vocabulary(12, 4)
    tok = models.build_word_tokenizer(vocab.tokens)
    model = models.build_tiny_model(ARCH, tok, seed=0).eval()
    return model, tok


def test_sequence_logps_match_a_direct_computation_whatever_the_padding(tiny):
    model, tok = tiny
    prompt, response = [3, 5, 6, 4], [7, 8, 1]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0]
    logps = torch.log_softmax(logits, -1)
    direct = sum(logps[len(prompt) - 1 + i, t].item() for i, t in enumerate(response))
    alone = sequence_logps(model, make_batch([prompt], [response], tok.pad_token_id))
    padded = sequence_logps(
        model, make_batch([[3, 5, 6, 9, 10, 11, 4], prompt], [[7], response], tok.pad_token_id)
    )
    assert alone[0].item() == pytest.approx(direct, abs=1e-4)
    assert padded[1].item() == pytest.approx(direct, abs=1e-4)


def test_sampling_is_the_untruncated_distribution(tiny):
    model, tok = tiny
    prompt = [3, 5, 6, 4]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1], -1)
    n = 6000
    draws = sample(model, [prompt] * n, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=1,
                   temperature=1.0, seed=0)
    counts = torch.bincount(torch.tensor([d[0] for d in draws]), minlength=len(probs)).double() / n
    # total variation small; and tokens outside any top-k still appear
    assert 0.5 * (counts - probs.double()).abs().sum().item() < 0.04
    rare = probs.argsort()[: len(probs) // 3]
    assert counts[rare].sum().item() > 0


def test_kl_of_the_reference_against_itself_is_zero_and_win_rates_are_rates(tiny):
    model, tok = tiny
    cfg = SimpleNamespace(
        seed=0, n_words=12, n_fillers=4, min_topics=2, max_topics=4, n_sft=1, n_train=1, n_heldout=10,
        n_eval=30, length_bias=1.0, label_noise=0.0, label_temperature=0.1,
    )
    task = embedded.generate(cfg)
    ev = Evaluator(
        ref_model=model, tokenizer=tok, judge=GoldJudge(), eval_rows=task["eval"], heldout_rows=task["heldout"],
        loss_name="dpo", loss_params={"beta": 0.1}, max_new_tokens=8, temperature=1.0, batch_size=7, seed=0,
    )
    row = ev.evaluate(model, step=0)
    assert row["kl"] == pytest.approx(0.0, abs=1e-5) and row["sqrt_kl"] == pytest.approx(0.0, abs=3e-3)
    assert 0.0 <= row["win_rate"] <= 1.0 and row["n_eval"] == 30
    assert row["reward_accuracy"] == 0.5  # identical models: every pair a tie, counted 1/2
    assert_length_controlled(row, ev.last_samples)


def assert_length_controlled(row: dict, samples: list[dict]) -> None:
    """The row's lc_win_rate is the regression on the characters of the texts the judge compared:
    a rate with its error, or NaN with the reason (alignsweep.evaluate.length_control)."""
    from alignsweep.evaluate.length_control import length_controlled_win_rate

    expected = length_controlled_win_rate([s["verdict"] for s in samples], [len(s["sample"]) for s in samples],
                                          [len(s["reference"]) for s in samples])
    got = {k: row[k] for k in ("lc_win_rate", "lc_win_rate_se", "lc_length_coef", "lc_note")}
    assert got == pytest.approx(expected.row(), nan_ok=True)
    if row["lc_note"]:
        assert row["lc_win_rate"] != row["lc_win_rate"] or row["lc_note"] == "every verdict is a tie"
    else:
        assert 0.0 <= row["lc_win_rate"] <= 1.0 and row["lc_win_rate_se"] > 0


def test_mean_and_standard_error():
    mean, se = mean_se([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx((1 / 3) ** 0.5 / 2)
