"""The one tokenisation of a (prompt, completion) pair that every stage uses: TRL's.

TRL's DPOTrainer and SFTTrainer (trl 1.16, `_prepare_dataset`) tokenise a prompt alone and the
prompt followed by its completion with `trl.data_utils._tokenize` (the chat template with the
generation prompt for conversational data; the tokenizer's own special tokens, BOS included, for
text), append EOS to a text completion that lacks it, and start the completion where the two token
lists diverge (`trl.data_utils.common_prefix_length`). The evaluator (held-out scoring, sampling)
and the length check call these functions, so they see the tokens training sees: a test decodes
what each stage sees for the same row and compares (tests/test_real_input.py).

Shapes: lists of token ids. Imports trl (and with it torch) when called.
"""

from __future__ import annotations

from typing import Any


def encode_prompt(tokenizer: Any, prompt: Any) -> list[int]:
    """The prompt's ids as the trainer tokenises it (with the generation prompt when it is a list
    of chat messages): what sampling continues."""
    from trl.data_utils import _tokenize

    if isinstance(prompt, list):
        return list(_tokenize(tokenizer, prompt, add_generation_prompt=True)["input_ids"])
    return list(_tokenize(tokenizer, prompt)["input_ids"])


def _with_eos(tokenizer: Any, completion: Any) -> Any:
    eos = tokenizer.eos_token
    if isinstance(completion, str) and eos and not completion.endswith(eos):
        return completion + eos
    return completion


def encode_completions(tokenizer: Any, prompt: Any, completions: list) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, one id list per completion), split as TRL's DPOTrainer splits a pair: the
    prompt is the prefix every prompt+completion shares with the prompt alone."""
    from trl.data_utils import _tokenize, common_prefix_length

    prompt_ids = encode_prompt(tokenizer, prompt)
    full = [list(_tokenize(tokenizer, prompt + _with_eos(tokenizer, c))["input_ids"]) for c in completions]
    cut = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return prompt_ids[:cut], [ids[cut:] for ids in full]


def pair_lengths(tokenizer: Any):
    """`lengths(prompts, completions)`: the tokens of each prompt+completion sequence as training
    has them (text: one batched tokenizer call)."""
    from trl.data_utils import _tokenize

    def lengths(prompts: list, completions: list) -> list[int]:
        texts = [p + _with_eos(tokenizer, c) for p, c in zip(prompts, completions)]
        if all(isinstance(t, str) for t in texts):
            return [len(ids) for ids in tokenizer(text=texts)["input_ids"]] if texts else []
        return [len(_tokenize(tokenizer, t)["input_ids"]) for t in texts]

    return lengths
