"""One layout for every stage: whether the rows go to TRL as chat messages (its conversational
layout, rendered by the tokenizer's chat template) or as plain text (its standard layout).

`data.chat_template`: `auto` uses the template when the data is conversational or the model has a
template (an instruct model); `always` uses it (text rows become one user turn and one assistant
turn); `never` does not (messages are flattened to their contents). TRL then tokenises either
layout itself (`trl.data_utils`), and `alignsweep.data.tokens` does the same for evaluation.
"""

from __future__ import annotations

from typing import Any

from alignsweep.errors import ConfigError

RESPONSE_FIELDS = ("chosen", "rejected", "completion", "reference")


def uses_template(mode: str, conversational: bool, has_template: bool, model_name: str) -> bool:
    """Whether rows go to the model as chat messages; a ConfigError when they must and the model
    has no template."""
    use = mode == "always" or (mode == "auto" and (conversational or has_template))
    if use and not has_template:
        raise ConfigError(
            f"data: the data is chat messages but model={model_name}'s tokenizer has no chat template; use an instruct "
            "model, or data.chat_template=never to train on the messages' text"
        )
    return use


def text_of(value: Any) -> str:
    """Plain text of a prompt or response: messages flattened to their contents, one blank line apart."""
    if isinstance(value, list):
        return "\n\n".join(m["content"] for m in value)
    return value


def to_messages(value: Any, role: str) -> list:
    return value if isinstance(value, list) else [{"role": role, "content": value.strip()}]


def to_text(value: Any, response: bool) -> str:
    if not isinstance(value, list):
        return value
    text = text_of(value)
    return " " + text if response and not text.startswith((" ", "\n")) else text


def render(rows: list[dict], template: bool) -> list[dict]:
    """`rows` (prompt plus any of chosen/rejected/completion/reference) in the layout chosen: all
    messages when `template`, else all text. `prompt_text` keeps the prompt's plain text (judges
    read it)."""
    out = []
    for row in rows:
        new = dict(row)
        new.setdefault("prompt_text", text_of(row["prompt"]).strip())
        for key in ("prompt", *RESPONSE_FIELDS):
            if key not in row or key == "reference":
                continue
            role = "user" if key == "prompt" else "assistant"
            new[key] = to_messages(row[key], role) if template else to_text(row[key], key != "prompt")
        if "reference" in row:
            new["reference"] = text_of(row["reference"]) if isinstance(row["reference"], list) else row["reference"]
        out.append(new)
    return out
