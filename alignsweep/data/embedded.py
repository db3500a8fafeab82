"""The embedded task: synthetic summarisation with a known, programmatic gold reward.

A prompt lists a few content words ("topics"); a good response names every topic once and nothing
else. Responses are drawn from a noisy writer that drops topics, adds off-topic words and pads with
content-free fillers. The gold reward is

    gold(x, y) = coverage(y) - 0.1 * extra(y)

where coverage is the fraction of the prompt's topics the response names and extra counts every
other token (fillers, off-topic words, repeats). It plays the role of Gao et al.'s gold reward
model and of the paper's GPT-4 judge.

Preference pairs are two independent responses to one prompt, labelled by a Bradley-Terry draw on
the gold reward plus a spurious length bias (the labeller likes longer answers more than quality
warrants), then flipped with probability `label_noise`. Under the default bias the labels favour
covering topics strongly and adding fillers mildly, while the gold reward penalises fillers: a DAA
that optimises the labels hard enough learns to pad, and its gold win rate rises, then falls.

Everything is generated in-process from a seed: no downloads.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

PROMPT_PREFIX = "summarize:"
PROMPT_SUFFIX = "=>"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
EXTRA_COST = 0.1  # gold reward lost per token that is not a new topic
MAX_RESPONSE_WORDS = 12

_CONTENT = (
    "apple river stone cloud maple tiger violin copper garden harbor lantern meadow "
    "pepper rocket saddle thunder velvet walnut anchor bridge candle desert falcon glacier "
    "island jungle kettle ladder mirror nectar orchid pillow quartz ribbon silver tunnel"
).split()
_FILLERS = "very really quite so just truly indeed basically actually simply".split()


@dataclass(frozen=True)
class Vocabulary:
    content: tuple[str, ...]
    fillers: tuple[str, ...]

    @property
    def tokens(self) -> list[str]:
        return [PAD, EOS, UNK, PROMPT_PREFIX, PROMPT_SUFFIX, *self.content, *self.fillers]


def vocabulary(n_words: int, n_fillers: int) -> Vocabulary:
    if not 1 <= n_words <= len(_CONTENT):
        raise ValueError(f"data.embedded.n_words: must be in 1..{len(_CONTENT)}, got {n_words}")
    if not 0 <= n_fillers <= len(_FILLERS):
        raise ValueError(f"data.embedded.n_fillers: must be in 0..{len(_FILLERS)}, got {n_fillers}")
    return Vocabulary(tuple(_CONTENT[:n_words]), tuple(_FILLERS[:n_fillers]))


def prompt_text(topics: list[str]) -> str:
    return " ".join([PROMPT_PREFIX, *topics, PROMPT_SUFFIX])


def topics_of(prompt: str) -> list[str]:
    words = prompt.split()
    if len(words) < 2 or words[0] != PROMPT_PREFIX or words[-1] != PROMPT_SUFFIX:
        raise ValueError(f"not an embedded-task prompt: {prompt!r}")
    return words[1:-1]


def response_words(response: str) -> list[str]:
    """The words of a response, up to the first end-of-sequence marker."""
    return response.split(EOS, 1)[0].split()


def gold_reward(prompt: str, response: str) -> float:
    topics = set(topics_of(prompt))
    seen: set[str] = set()
    extra = 0
    for word in response_words(response):
        if word in topics and word not in seen:
            seen.add(word)
        else:
            extra += 1
    return len(seen) / len(topics) - EXTRA_COST * extra


def _write(rng: random.Random, topics: list[str], vocab: Vocabulary) -> str:
    """One response from the noisy writer: its quality and verbosity vary from draw to draw."""
    quality = rng.uniform(0.3, 1.0)
    verbosity = rng.uniform(0.0, 2.0)
    words = [t for t in topics if rng.random() < quality]
    others = [w for w in vocab.content if w not in topics]
    n_off = sum(rng.random() > quality for _ in range(2))
    n_fill = min(_poisson(rng, verbosity), 6) if vocab.fillers else 0
    for extra in rng.sample(others, min(n_off, len(others))) + [rng.choice(vocab.fillers) for _ in range(n_fill)]:
        words.insert(rng.randint(0, len(words)), extra)
    return " " + " ".join(words[:MAX_RESPONSE_WORDS])


def _poisson(rng: random.Random, lam: float) -> int:
    threshold, k, p = math.exp(-lam), 0, rng.random()
    while p > threshold:
        k += 1
        p *= rng.random()
    return k


def _prompt(rng: random.Random, vocab: Vocabulary, min_topics: int, max_topics: int) -> list[str]:
    n = rng.randint(min_topics, min(max_topics, len(vocab.content)))
    return rng.sample(vocab.content, n)


def _label(rng: random.Random, prompt: str, a: str, b: str, cfg: Any) -> tuple[str, str]:
    """Bradley-Terry draw on gold reward plus a spurious length bias, then label noise."""
    logit = (gold_reward(prompt, a) - gold_reward(prompt, b)) / cfg.label_temperature
    logit += cfg.length_bias * (len(a.split()) - len(b.split()))
    p_a = 1.0 / (1.0 + math.exp(-max(min(logit, 60.0), -60.0)))
    a_wins = rng.random() < p_a
    if rng.random() < cfg.label_noise:
        a_wins = not a_wins
    return (a, b) if a_wins else (b, a)


_SETTINGS = ("seed", "n_words", "n_fillers", "min_topics", "max_topics", "n_sft", "n_train", "n_heldout", "n_eval",
             "length_bias", "label_noise", "label_temperature")


def generate(cfg: Any) -> dict[str, list[dict[str, Any]]]:
    """All splits of the task, deterministic in `cfg.seed`.

    Returns `sft` (prompt, completion), `train` and `heldout` (prompt, chosen, rejected) and
    `eval` (prompt, reference): the reference is one draw of the writer, the analogue of TL;DR's
    human summary.
    """
    if not isinstance(cfg, SimpleNamespace):  # plain attributes: a DictConfig's cost ~10 us a read
        cfg = SimpleNamespace(**{k: getattr(cfg, k) for k in _SETTINGS if hasattr(cfg, k)})
    if cfg.min_topics < 1 or cfg.max_topics < cfg.min_topics:
        raise ValueError(
            f"data.embedded: need 1 <= min_topics <= max_topics, got {cfg.min_topics}, {cfg.max_topics}"
        )
    vocab = vocabulary(cfg.n_words, cfg.n_fillers)
    rng = random.Random(cfg.seed)

    def prompts(n: int) -> list[list[str]]:
        return [_prompt(rng, vocab, cfg.min_topics, cfg.max_topics) for _ in range(n)]

    sft = []
    for topics in prompts(cfg.n_sft):
        sft.append({"prompt": prompt_text(topics), "completion": _write(rng, topics, vocab)})

    def pairs(n: int) -> list[dict[str, str]]:
        rows = []
        while len(rows) < n:
            topics = _prompt(rng, vocab, cfg.min_topics, cfg.max_topics)
            prompt = prompt_text(topics)
            a, b = _write(rng, topics, vocab), _write(rng, topics, vocab)
            if a == b:  # identical responses carry no preference
                continue
            chosen, rejected = _label(rng, prompt, a, b, cfg)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return rows

    train = pairs(cfg.n_train)
    heldout = pairs(cfg.n_heldout)
    evaluation = [{"prompt": prompt_text(t), "reference": _write(rng, t, vocab)} for t in prompts(cfg.n_eval)]
    return {"sft": sft, "train": train, "heldout": heldout, "eval": evaluation}
