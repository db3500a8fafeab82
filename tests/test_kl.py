"""Both KL estimators against the exact sequence KL, enumerated on a model with a 5-token vocabulary.

With at most 3 new tokens, the sampler's sequences are: EOS after 0, 1 or 2 other tokens, or 3
tokens without EOS (truncated, as `sample()` stops): 1 + 4 + 16 + 64 = 85 sequences. Their
probabilities sum to one, and KL(pi || pi_ref) = sum_y pi(y) (log pi(y) - log pi_ref(y)) exactly.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from alignsweep.train import models
from alignsweep.data import embedded
from alignsweep.evaluate.evaluator import Evaluator
from alignsweep.evaluate.sequences import make_batch, sequence_logps, sequence_stats
from alignsweep.errors import ConfigError

ARCH = SimpleNamespace(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=16)
MAX_NEW = 3


@pytest.fixture(scope="module")
def setup():
    tok = models.build_word_tokenizer([embedded.PAD, embedded.EOS, embedded.UNK, "x", "y"])

    def model(seed: int):
        m = models.build_tiny_model(ARCH, tok, seed=seed).eval()
        with torch.no_grad():
            m.get_output_embeddings().weight.mul_(5.0)  # peakier next-token distributions: KL ~ 0.25 nats
        return m

    policy, ref = model(1), model(2)
    prompt = tok("x y", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    others = [t for t in range(len(tok)) if t != eos]
    seqs = [list(pre) + [eos] for k in range(MAX_NEW) for pre in itertools.product(others, repeat=k)]
    seqs += [list(pre) for pre in itertools.product(others, repeat=MAX_NEW)]
    batch = make_batch([prompt] * len(seqs), seqs, tok.pad_token_id)
    lp, lq, token_kl = (t.double() for t in sequence_stats(policy, ref, batch))
    p = lp.exp()
    exact = float((p * (lp - lq)).sum())
    return SimpleNamespace(tok=tok, policy=policy, ref=ref, seqs=seqs, batch=batch, p=p, lp=lp, lq=lq,
                           token_kl=token_kl, exact=exact)


class LongerWins:
    """A judge with only compare() (any such object will do): the longer answer wins."""

    def compare(self, prompts, samples, references):
        return [1.0 if len(a.split()) > len(b.split()) else 0.0 if len(a.split()) < len(b.split()) else 0.5
                for a, b in zip(samples, references)]


def evaluator(s, n: int, estimator: str = "mc") -> Evaluator:
    return Evaluator(
        ref_model=s.ref, tokenizer=s.tok, judge=LongerWins(), eval_rows=[{"prompt": "x y", "reference": " x"}] * n,
        heldout_rows=[], loss_name="dpo", loss_params={"beta": 0.1}, max_new_tokens=MAX_NEW, temperature=1.0,
        batch_size=1000, seed=0, kl_estimator=estimator,
    )


def test_the_enumeration_is_the_sampling_distribution_and_the_chain_rule_holds(setup):
    s = setup
    assert len(s.seqs) == 85 and float(s.p.sum()) == pytest.approx(1.0, abs=1e-6)
    assert 0.1 < s.exact < 1.0
    # sequence_stats' log-probs are those of sequence_logps
    assert torch.allclose(s.lp.float(), sequence_logps(s.policy, s.batch), atol=1e-5)
    assert torch.allclose(s.lq.float(), sequence_logps(s.ref, s.batch), atol=1e-5)
    # E_pi[sum_t KL_t(prefix)] is the sequence KL, truncated sequences included
    assert float((s.p * s.token_kl).sum()) == pytest.approx(s.exact, rel=1e-5)
    # per-token KL is the exact KL over the vocabulary: check one position by hand
    prompt = s.tok("x y", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp0 = torch.log_softmax(s.policy(torch.tensor([prompt])).logits[0, -1].double(), -1)
        lq0 = torch.log_softmax(s.ref(torch.tensor([prompt])).logits[0, -1].double(), -1)
    first_kl = float((lp0.exp() * (lp0 - lq0)).sum())
    assert float(s.token_kl[0]) == pytest.approx(first_kl, rel=1e-4)  # seqs[0] = [EOS]: one position


def test_both_estimators_match_the_exact_kl_and_the_token_one_has_lower_variance(setup):
    s = setup
    est = evaluator(s, 4000).kl(s.policy)
    assert abs(est["kl_mc"] - s.exact) < 4 * est["kl_mc_se"]
    assert abs(est["kl_exact_token"] - s.exact) < 4 * est["kl_exact_token_se"]
    assert est["kl_exact_token_se"] < est["kl_mc_se"] / 2
    assert (est["kl"], est["kl_se"]) == (est["kl_mc"], est["kl_mc_se"])  # the default reports mc
    # every sample is one of the enumerated sequences, and truncation is as frequent as it should be
    seen = {tuple(r) for r in est["responses"]}
    assert seen <= {tuple(q) for q in s.seqs}
    truncated = sum(1 for r in est["responses"] if r[-1] != s.tok.eos_token_id) / 4000
    p_truncated = float(s.p[[i for i, q in enumerate(s.seqs) if q[-1] != s.tok.eos_token_id]].sum())
    assert abs(truncated - p_truncated) < 4 * math.sqrt(p_truncated * (1 - p_truncated) / 4000)


def test_the_estimator_option_chooses_what_kl_reports(setup):
    s = setup
    est = evaluator(s, 200, "exact_token").kl(s.policy)
    assert (est["kl"], est["kl_se"]) == (est["kl_exact_token"], est["kl_exact_token_se"])
    row = evaluator(s, 50, "exact_token").evaluate(s.policy, step=0)
    assert row["kl"] == row["kl_exact_token"] and {"kl_mc", "kl_mc_se", "kl_exact_token_se"} <= set(row)
    assert row["unparseable"] == 0 and row["n_eval"] == 50 and 0 <= row["win_rate"] <= 1
    same = evaluator(s, 50, "exact_token").kl(s.ref)  # the reference against itself: both exactly 0
    assert same["kl_exact_token"] == pytest.approx(0.0, abs=1e-6) and same["kl_mc"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="^eval.kl_estimator"):
        evaluator(s, 1, "exact")
