"""Pairwise judge prompts, one per task, from Rafailov et al. 2023 (DPO, Appendix C.2), the GPT-4
win-rate prompts that Rafailov et al. 2024 reuse.

A template has three fields, `{prompt}`, `{first}` and `{second}`: the task prompt and the two
answers in the order they are presented ("A" is `first`). The judge is asked to end with a line
`<label>: A` or `<label>: B`; `alignsweep.evaluate.judges.llm.parse_verdict` reads it.
"""

from __future__ import annotations

import re

SUMMARY = """Which of the following summaries does a better job of summarizing the most important points in the given forum post, without including unimportant or irrelevant details? A good summary is both precise and concise.

Post:
{prompt}

Summary A:
{first}

Summary B:
{second}

FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should use the format:
Comparison: <one-sentence comparison and explanation>
Preferred: <"A" or "B">"""

INSTRUCTION = """For the following query to a chatbot, which response is more helpful?

Query: {prompt}

Response A:
{first}

Response B:
{second}

FIRST provide a one-sentence comparison of the two responses and explain which you feel is more helpful. SECOND, on a new line, state only "A" or "B" to indicate which response is more helpful. Your response should use the format:
Comparison: <one-sentence comparison and explanation>
More helpful: <"A" or "B">"""

TEMPLATES = {"summary": SUMMARY, "instruction": INSTRUCTION}
SUMMARY_DATA = ("tldr",)  # data configs whose task is summarisation: judge.prompt=auto picks `summary`

_FIELD = re.compile(r"\{(prompt|first|second)\}")


def choose(prompt: str, data_name: str | None) -> str:
    """The template name for `judge.prompt` (summary | instruction | auto)."""
    if prompt == "auto":
        return "summary" if data_name in SUMMARY_DATA else "instruction"
    if prompt not in TEMPLATES:
        raise KeyError(prompt)
    return prompt


def render(template: str, *, prompt: str, first: str, second: str) -> str:
    """Fill the template in one pass, so braces inside the texts are never read as fields."""
    values = {"prompt": prompt, "first": first, "second": second}
    return _FIELD.sub(lambda m: values[m.group(1)], template)
