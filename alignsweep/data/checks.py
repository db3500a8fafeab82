"""Combinations of model and data that cannot run, refused when the config is composed (dry run
included): each message says what to type instead. Reads only small JSON files and first records
(`alignsweep.data.files`), no torch."""

from __future__ import annotations

import os
from typing import Any, Optional

from alignsweep.data.files import check_local, has_chat_template
from alignsweep.errors import ConfigError

CHAT_TEMPLATE_MODES = ("auto", "always", "never")
PRETRAINED = "model=smollm2_135m (runs on a laptop), pythia_1b or another pretrained model"


def model_has_template(model: Any) -> Optional[bool]:
    """Whether the model's tokenizer has a chat template: `model.instruct`, or its local folder's
    tokenizer files; None when unknown before loading (a hub id)."""
    if model.instruct is not None:
        return bool(model.instruct)
    if model.path is not None and os.path.isdir(model.path):
        return has_chat_template(model.path)
    return None


def check_data_model(cfg: Any) -> None:
    data, model = cfg.data, cfg.model
    if data.chat_template not in CHAT_TEMPLATE_MODES:
        raise ConfigError(f"data.chat_template: expected one of {', '.join(CHAT_TEMPLATE_MODES)}, got {data.chat_template!r}")
    if data.embedded is not None:
        if data.path is not None or data.sft_path is not None:
            raise ConfigError(
                f"data.path: data={data.name} is generated in-process and reads no file, got "
                f"data.path={data.path or data.sft_path}; for your own preference data choose a data config with it, "
                f"e.g. data=tldr data.path={data.path or data.sft_path} (or data=ultrafeedback), and {PRETRAINED}"
            )
        return
    if model.arch is not None:
        raise ConfigError(
            f"model: model={model.name} is built from scratch with the embedded task's word vocabulary and can only "
            f"train data=embedded, got data={data.name}; use {PRETRAINED}"
        )
    if data.prompt_column is not None and data.prompt_column in (data.chosen_column, data.rejected_column):
        raise ConfigError(
            f"data.prompt_column: {data.prompt_column!r} is also the chosen or rejected column, which would train on "
            "prompt == response; for dialogues with no prompt column (the hh-rlhf layout) set data.prompt_column=null: "
            "the prompt is then the shared beginning of chosen and rejected"
        )
    for key in ("path", "sft_path"):
        if data[key] is not None and not os.path.exists(data[key]):
            raise ConfigError(f"data.{key}: {data[key]} does not exist")
    if data.path is None:
        return
    columns = (data.prompt_column, data.chosen_column, data.rejected_column)
    entry = check_local(data.path, columns, data.split, data.heldout_split)
    conversational = any(entry["conversational"].get(c) for c in columns if c)
    template = model_has_template(model)
    if template is False and data.chat_template == "always":
        raise ConfigError(
            f"data.chat_template: always, but model={model.name} has no chat template; use data.chat_template=auto "
            "or an instruct model"
        )
    if conversational and template is False and data.chat_template != "never":
        raise ConfigError(
            f"data.path: {data.path} holds chat messages but model={model.name} has no chat template to render them; "
            "use an instruct model (e.g. model=smollm2_135m), or data.chat_template=never to train on the messages' "
            "text without a template"
        )
