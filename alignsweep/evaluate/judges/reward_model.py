"""A Hugging Face sequence-classification reward model as a judge.

`judge.model` is a hub id or a local folder of any `AutoModelForSequenceClassification` checkpoint
with one output (num_labels=1: the scalar reward). Each text is scored as the model expects it:
through the tokenizer's chat template (user = prompt, assistant = response) when it has one, else
prompt + response as plain text; texts longer than `judge.max_length` tokens are cut from the left
(the reward is read at the end of the response). Texts are scored `judge.batch_size` at a time,
sorted by length to pad little; scores are memoised per (prompt, response), so the reference
responses are scored once per run. A sample wins when its reward exceeds the reference's by more
than `tol` (1e-5), loses when it is lower by as much, and ties otherwise.

Metrics: `rm_reward` (mean reward of the samples) and `rm_reward_reference` (of the references).
"""

from __future__ import annotations

from typing import Optional, Sequence

from alignsweep.evaluate.judges.base import JudgeResult, outcome_from_scores

DTYPES = ("float32", "bfloat16", "float16")


class RewardModelJudge:
    name = "reward_model"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 64,
        dtype: str = "float32",
        max_length: int = 2048,
        device: Optional[str] = None,
        tol: float = 1e-5,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from alignsweep.errors import ConfigError

        if dtype not in DTYPES:
            raise ConfigError(f"judge.dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(model)
            net = AutoModelForSequenceClassification.from_pretrained(model, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"judge.model: cannot load the reward model {model!r}: {str(exc).splitlines()[0]} If this machine "
                "cannot reach the hub, download it elsewhere, copy it here and set judge.model=DIR."
            ) from None
        if net.config.num_labels != 1:
            raise ConfigError(
                f"judge.model: {model!r} has {net.config.num_labels} outputs; the reward_model judge needs a "
                "scalar reward model (a sequence classifier with num_labels=1)"
            )
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError(f"judge.model: the tokenizer of {model!r} has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"
        net.config.pad_token_id = tokenizer.pad_token_id  # the model reads the reward at the last non-pad token
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = net.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = model
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length)
        self.tol = tol
        self._memo: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        return f"RewardModelJudge({self.source!r})"

    def _text(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": response.strip()}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + response

    def _encode(self, prompt: str, response: str) -> list[int]:
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        ids = self.tokenizer(
            self._text(prompt, response),
            add_special_tokens=not templated,  # a chat template writes its own special tokens
            truncation=True,
            max_length=self.max_length,
        )["input_ids"]
        return list(ids)

    def _score_ids(self, rows: Sequence[list[int]]) -> list[float]:
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        return logits[:, 0].float().cpu().tolist()

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The reward of each (prompt, response)."""
        pairs = list(zip(prompts, responses, strict=True))
        todo = sorted({p for p in pairs if p not in self._memo})
        encoded = {p: self._encode(*p) for p in todo}
        todo.sort(key=lambda p: len(encoded[p]))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for pair, score in zip(chunk, self._score_ids([encoded[p] for p in chunk])):
                self._memo[pair] = score
        return [self._memo[p] for p in pairs]

    def compare(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> list[float]:
        return self.evaluate(prompts, samples, references).outcomes

    def evaluate(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> JudgeResult:
        mine = self.scores(prompts, samples)
        theirs = self.scores(prompts, references)
        outcomes = [outcome_from_scores(a, b, self.tol) for a, b in zip(mine, theirs, strict=True)]
        n = len(mine) or 1
        return JudgeResult(outcomes, {"rm_reward": sum(mine) / n, "rm_reward_reference": sum(theirs) / n})
