"""The embedded task: its gold reward, its labeller's biases, determinism."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from alignsweep.data import embedded as e


def task_cfg(**kw):
    base = dict(
        seed=0, n_words=24, n_fillers=6, min_topics=3, max_topics=6, n_sft=300, n_train=400, n_heldout=50,
        n_eval=40, length_bias=1.2, label_noise=0.1, label_temperature=0.1,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_gold_reward_by_hand():
    prompt = "summarize: apple river stone =>"
    assert e.gold_reward(prompt, " apple river stone") == pytest.approx(1.0)
    assert e.gold_reward(prompt, " stone apple") == pytest.approx(2 / 3)
    # one filler and one repeat cost 0.1 each
    assert e.gold_reward(prompt, " apple very river stone apple") == pytest.approx(1.0 - 0.2)
    assert e.gold_reward(prompt, " tiger") == pytest.approx(-0.1)
    assert e.gold_reward(prompt, "") == 0.0
    # words after the end-of-sequence marker do not count
    assert e.gold_reward(prompt, " apple<eos> river stone") == pytest.approx(1 / 3)


def test_prompts_round_trip_and_bad_prompts_are_refused():
    assert e.topics_of(e.prompt_text(["apple", "tiger"])) == ["apple", "tiger"]
    with pytest.raises(ValueError, match="not an embedded-task prompt"):
        e.topics_of("apple tiger")


def test_generation_is_deterministic_and_sized():
    a, b = e.generate(task_cfg()), e.generate(task_cfg())
    assert a == b
    assert e.generate(task_cfg(seed=1)) != a
    assert {k: len(v) for k, v in a.items()} == {"sft": 300, "train": 400, "heldout": 50, "eval": 40}
    assert all(r["chosen"] != r["rejected"] for r in a["train"])
    assert all(len(e.response_words(r["completion"])) <= e.MAX_RESPONSE_WORDS for r in a["sft"])


def _agreement(rows):
    return statistics.mean(
        e.gold_reward(r["prompt"], r["chosen"]) > e.gold_reward(r["prompt"], r["rejected"]) for r in rows
    )


def _longer(rows):
    return statistics.mean(len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows)


def test_labels_follow_gold_reward_with_noise():
    clean = e.generate(task_cfg(label_noise=0.0, length_bias=0.0, n_train=2000))["train"]
    noisy = e.generate(task_cfg(label_noise=0.4, length_bias=0.0, n_train=2000))["train"]
    assert _agreement(clean) > 0.8
    assert _agreement(noisy) < _agreement(clean) - 0.15


def test_length_bias_makes_longer_answers_win_more():
    unbiased = e.generate(task_cfg(length_bias=0.0, n_train=2000))["train"]
    biased = e.generate(task_cfg(length_bias=2.0, n_train=2000))["train"]
    assert _longer(biased) > _longer(unbiased) + 0.1


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="n_words"):
        e.vocabulary(0, 3)
    with pytest.raises(ValueError, match="min_topics"):
        e.generate(task_cfg(min_topics=5, max_topics=3))


def test_sft_split_does_not_depend_on_the_pair_settings():
    """The SFT cache key leaves these out (alignsweep.train.sft.PAIR_ONLY_KEYS): it must be true."""
    from alignsweep.train.sft import PAIR_ONLY_KEYS

    base = e.generate(task_cfg())["sft"]
    changed = {"n_train": 50, "n_heldout": 7, "n_eval": 3, "length_bias": 0.0, "label_noise": 0.4, "label_temperature": 1.0}
    assert set(changed) == set(PAIR_ONLY_KEYS)
    assert e.generate(task_cfg(**changed))["sft"] == base
