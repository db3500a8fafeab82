"""Evaluation batch sizes: results independent of the size, sizes fitted to the memory, and the
out-of-memory back-off, on real models and real allocation failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from alignsweep.evaluate import batching as eval_batching

from alignsweep.train import models
from alignsweep.data import embedded
from alignsweep.evaluate.batching import BatchSizer, estimate_batch_size, generation_bytes, is_oom, scoring_bytes
from alignsweep.evaluate.evaluator import Evaluator
from alignsweep.evaluate.sequences import prompt_seed, sample
from alignsweep.evaluate.judges import GoldJudge
from alignsweep.errors import ConfigError

ARCH = SimpleNamespace(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
TASK = SimpleNamespace(
    seed=0, n_words=12, n_fillers=4, min_topics=2, max_topics=4, n_sft=1, n_train=1, n_heldout=12,
    n_eval=30, length_bias=1.0, label_noise=0.0, label_temperature=0.1,
)


@pytest.fixture(scope="module")
def setup():
    vocab = embedded.vocabulary(12, 4)
    tok = models.build_word_tokenizer(vocab.tokens)
    ref = models.build_tiny_model(ARCH, tok, seed=0).eval()
    policy = models.build_tiny_model(ARCH, tok, seed=1).eval()  # another model: KL > 0
    return SimpleNamespace(tok=tok, ref=ref, policy=policy, task=embedded.generate(TASK))


def evaluator(s, batch_size, **kw) -> Evaluator:
    return Evaluator(
        ref_model=s.ref, tokenizer=s.tok, judge=GoldJudge(), eval_rows=s.task["eval"], heldout_rows=s.task["heldout"],
        loss_name="dpo", loss_params={"beta": 0.1}, max_new_tokens=8, temperature=1.0, batch_size=batch_size, seed=3,
        **kw,
    )


def test_samples_and_metrics_do_not_depend_on_the_batch_size(setup):
    s = setup
    results = {}
    for size in (1, 7, "auto"):
        ev = evaluator(s, size)
        results[size] = (ev.kl(s.policy, seed=5)["responses"], ev.evaluate(s.policy, step=4), ev.batch_info())
    base_samples, base_row, _ = results[1]
    assert len(base_samples) == 30 and any(len(r) > 1 for r in base_samples)
    for size in (7, "auto"):
        samples, row, info = results[size]
        assert samples == base_samples, f"batch size {size} drew other samples"
        assert row.keys() == base_row.keys()
        for key, value in base_row.items():  # the same samples; scores differ only by float rounding
            assert row[key] == (value if isinstance(value, str) else  # lc_note: text
                                pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True)), key
    assert base_row["kl_exact_token"] > 0.01
    assert results[1][2]["generate"] == 1 and results[7][2]["score"] == 7
    assert results["auto"][2] == {"setting": "auto", "heldout": 12, "generate": 30, "score": 30, "oom_backoffs": 0,
                                  "sampler": "transformers"}  # everything in one batch on this machine


def test_a_prompts_sample_is_the_same_alone_or_in_any_batch(setup):
    s = setup
    prompts = [s.tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in s.task["eval"][:9]]
    kw = dict(eos_id=s.tok.eos_token_id, pad_id=s.tok.pad_token_id, max_new_tokens=8, temperature=1.0, seed=11)
    together = sample(s.policy, prompts, **kw)
    alone = [sample(s.policy, [p], first_index=i, **kw)[0] for i, p in enumerate(prompts)]
    shuffled = sample(s.policy, prompts[4:] + prompts[:4], **kw)  # other indices: other draws
    assert together == alone
    assert shuffled != together[4:] + together[:4]
    assert len({prompt_seed(11, i) for i in range(10_000)}) == 10_000 and prompt_seed(11, 0) != prompt_seed(12, 0)


def test_batch_size_setting_is_checked():
    assert BatchSizer("auto").fixed is None and BatchSizer(16).fixed == 16
    for bad in (0, -3, "big", 1.5, True):
        with pytest.raises(ConfigError, match="^eval.batch_size"):
            BatchSizer(bad)


def test_auto_sizes_follow_the_memory_estimate_on_cpu(setup, monkeypatch):
    cpu = torch.device("cpu")
    free = eval_batching.host_available_bytes()
    total = int(open("/proc/meminfo").read().split()[1]) * 1024  # MemTotal
    assert free is not None and 0 < free <= total
    assert estimate_batch_size(cpu, scoring_bytes(setup.policy, 40, 16)) == eval_batching.CPU_CAP  # tiny: the cap
    monkeypatch.setattr(eval_batching, "free_bytes", lambda device: 10_000)  # the arithmetic, on a fixed budget
    assert estimate_batch_size(cpu, 1000) == 5  # half the free memory, 1000 bytes per sequence
    assert estimate_batch_size(cpu, 40_000) == 1
    # the estimates grow with the lengths and the vocabulary, as the formulas say
    assert generation_bytes(setup.policy, 10, 16) < generation_bytes(setup.policy, 10, 64)
    assert generation_bytes(setup.policy, 10, 16, full_prefill_logits=True) > generation_bytes(setup.policy, 10, 16)
    assert scoring_bytes(setup.policy, 40, 16) < scoring_bytes(setup.policy, 80, 32)


def test_only_allocation_failures_are_retried():
    assert is_oom(MemoryError()) and is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))
    sizer = BatchSizer(8)

    def broken(s):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        sizer.run("score", 20, broken, device=torch.device("cpu"), bytes_per_sequence=1)
    assert sizer.backoffs == 0


# Runs in a child process whose address space is limited (RLIMIT_AS) to what it uses after loading
# plus HEADROOM: the allocator genuinely fails for large batches. The model is small but its
# vocabulary is large (32768 words), so a batch's logits take ~10 MB per sequence.
MEMORY_LIMITED = textwrap.dedent(
    """
    import json, re, resource, sys
    from types import SimpleNamespace
    import torch
    torch.set_num_threads(1)
    from alignsweep.train import models
    from alignsweep.evaluate.evaluator import Evaluator

    class Judge:
        def compare(self, prompts, samples, references):
            return [0.5 for _ in samples]

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(32765)]
    tok = models.build_word_tokenizer(words)
    arch = SimpleNamespace(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=64)
    ref, policy = (models.build_tiny_model(arch, tok, seed=s).eval() for s in (0, 1))
    rows = [{"prompt": " ".join(f"w{(7 * i + j) % 32765}" for j in range(6 + i % 5)), "reference": " w1"} for i in range(48)]
    pairs = [{"prompt": r["prompt"], "chosen": " w3 w4", "rejected": " w5"} for r in rows[:40]]

    def run(batch_size):
        ev = Evaluator(ref_model=ref, tokenizer=tok, judge=Judge(), eval_rows=rows, heldout_rows=pairs,
                       loss_name="dpo", loss_params={"beta": 0.1}, max_new_tokens=24, temperature=1.0,
                       batch_size=batch_size, seed=0)
        row = ev.evaluate(policy, step=1)
        return {"row": row, "samples": ev.kl(policy, seed=9)["responses"], "info": ev.batch_info()}

    out = {"free": run(4)}  # before the limit: small batches
    size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    headroom = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom, resource.RLIM_INFINITY))
    try:
        torch.empty(48 * 24 * 32768 * 5, dtype=torch.float32)  # what one batch of all 48 would take
        out["one_batch_fits"] = True
    except RuntimeError:
        out["one_batch_fits"] = False
    out["fixed"] = run(48)
    out["auto"] = run("auto")
    print(json.dumps(out))
    """
)


def test_out_of_memory_halves_the_batch_and_the_results_do_not_change(tmp_path):
    script = tmp_path / "limited.py"
    script.write_text(MEMORY_LIMITED)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")  # no threads started under the limit
    proc = subprocess.run([sys.executable, str(script), str(160 * 2**20)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["one_batch_fits"] is False, "the limit must be too small for one batch of 48"
    free, fixed, auto = out["free"], out["fixed"], out["auto"]
    # eval.batch_size=48 ran out of memory for real, backed off, and finished
    assert fixed["info"]["oom_backoffs"] >= 1
    assert fixed["info"]["score"] < 48
    assert "out of memory at batch size" in proc.stderr
    # auto read the address-space limit and chose sizes that fit
    assert auto["info"]["score"] < 48 and auto["info"]["oom_backoffs"] == 0
    print(json.dumps({k: out[k]["info"] for k in ("free", "fixed", "auto")}))
    for other in (fixed, auto):
        assert other["samples"] == free["samples"]
        for key, value in free["row"].items():
            assert other["row"][key] == (value if isinstance(value, str) else  # lc_note: text
                                         pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True)), key
