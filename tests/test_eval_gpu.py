"""Evaluation on a CUDA GPU: the out-of-memory back-off and `auto` sizes against real device memory,
and vLLM's samples against the transformers sampler's (same checkpoint, same metric code).

Skipped without CUDA (and, for the vLLM test, without vLLM: `pip install -e ".[vllm]"`). Run on a
GPU machine with `python -m pytest -m gpu -s tests/test_eval_gpu.py`; `-s` prints a JSON line of
the measured numbers (sizes, timings, the two samplers' metrics). NOT YET RUN: the development
machines have no GPU.
"""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest
import torch

from alignsweep.train import models
from alignsweep.data import embedded
from alignsweep.evaluate.evaluator import Evaluator
from alignsweep.evaluate.vllm_sampler import VLLMSampler, vllm_installed

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]


class Tie:
    def compare(self, prompts, samples, references):
        return [0.5] * len(samples)


def big_vocab_models(vocab: int = 32768):
    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = models.build_word_tokenizer(words)
    arch = SimpleNamespace(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position_embeddings=128)
    ref, policy = (models.build_tiny_model(arch, tok, seed=s).eval().cuda() for s in (0, 1))
    rows = [{"prompt": " ".join(f"w{(7 * i + j) % (vocab - 3)}" for j in range(8 + i % 9)), "reference": " w1"}
            for i in range(512)]
    return tok, ref, policy, rows


def test_cuda_out_of_memory_halves_the_batch_and_auto_fits_the_free_memory():
    tok, ref, policy, rows = big_vocab_models()

    def run(batch_size):
        ev = Evaluator(ref_model=ref, tokenizer=tok, judge=Tie(), eval_rows=rows, heldout_rows=[], loss_name="dpo",
                       loss_params={"beta": 0.1}, max_new_tokens=64, temperature=1.0, batch_size=batch_size, seed=0)
        torch.cuda.synchronize()
        start = time.perf_counter()
        row = ev.evaluate(policy, step=0)
        torch.cuda.synchronize()
        return {"row": row, "samples": ev.kl(policy, seed=0)["responses"], "info": ev.batch_info(),
                "eval_s": time.perf_counter() - start}

    base = run(16)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    keep = 2 << 30  # leave 2 GiB: one batch of 512 needs ~5 GiB of logits per model
    blocker = torch.empty(max(0, free - keep), dtype=torch.uint8, device="cuda")
    try:
        fixed = run(512)
        auto = run("auto")
    finally:
        del blocker
        torch.cuda.empty_cache()
    print(json.dumps({k: {"info": v["info"], "eval_s": round(v["eval_s"], 2)} for k, v in
                      (("16", base), ("512_limited", fixed), ("auto_limited", auto))}))
    assert fixed["info"]["oom_backoffs"] >= 1 and fixed["info"]["score"] < 512
    assert auto["info"]["oom_backoffs"] == 0 and 1 <= auto["info"]["score"] < 512
    for other in (fixed, auto):
        # per-prompt seeds: the same samples; on a GPU the kernels may differ by batch shape, so a rare
        # draw that lands within float rounding of a boundary may differ
        same = sum(a == b for a, b in zip(other["samples"], base["samples"]))
        assert same >= 0.99 * len(rows)
        for key in ("kl_mc", "kl_exact_token", "response_length"):
            assert other["row"][key] == pytest.approx(base["row"][key], rel=2e-2, abs=1e-3), key


def summary(est: dict, eos_id: int, max_new: int) -> dict:
    """Mean length, truncation, both KL estimators and the policy's mean log-probability of the
    samples (minus the sampler's entropy if it sampled the policy), with standard errors."""
    from alignsweep.evaluate.sequences import mean_se

    lengths = [len(r) - (1 if r and r[-1] == eos_id else 0) for r in est["responses"]]
    out = {k: est[k] for k in ("kl_mc", "kl_mc_se", "kl_exact_token", "kl_exact_token_se")}
    out["length"], out["length_se"] = mean_se([float(x) for x in lengths])
    out["truncated"], out["truncated_se"] = mean_se([float(r[-1] != eos_id) for r in est["responses"]])
    out["policy_logp"], out["policy_logp_se"] = mean_se(est["policy_logps"].tolist())
    assert all(r and (r[-1] == eos_id or len(r) == max_new) for r in est["responses"])
    return out


def agree(a: dict, b: dict, key: str) -> bool:
    return abs(a[key] - b[key]) <= 4 * math.sqrt(a[f"{key}_se"] ** 2 + b[f"{key}_se"] ** 2) + 1e-9


@pytest.mark.skipif(not vllm_installed(), reason="needs vLLM (pip install -e '.[vllm]')")
def test_vllm_samples_agree_in_distribution_with_transformers_samples(tmp_path):
    """Same weights, same prompts, the same metric code: vLLM's and transformers' samples agree in
    mean length, truncation, both KL estimators and the policy's log-probability of its samples
    (each within four standard errors of the difference); then, after the policy's weights change,
    vLLM samples the new weights, not the checkpoint it was built from."""
    max_new = 32
    task = embedded.generate(SimpleNamespace(
        seed=0, n_words=24, n_fillers=8, min_topics=3, max_topics=6, n_sft=1, n_train=1, n_heldout=1,
        n_eval=256, length_bias=1.0, label_noise=0.0, label_temperature=0.1,
    ))
    tok = models.build_word_tokenizer(embedded.vocabulary(24, 8).tokens)
    # head size 64: one vLLM's attention kernels support (the embedded_tiny model's 16 may not be)
    arch = SimpleNamespace(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=1024, max_position_embeddings=128)

    def model(seed):
        m = models.build_tiny_model(arch, tok, seed=seed)
        with torch.no_grad():
            m.get_output_embeddings().weight.mul_(1.5)  # peakier next-token distributions than at initialisation
        return m.to(torch.bfloat16).cuda().eval()

    policy, ref = model(1), model(2)
    policy.save_pretrained(tmp_path / "model")  # what the engine is built from (a job uses its SFT folder)
    rows = (task["eval"] * 8)[:2048]  # each copy of a prompt has its own index, so its own seed
    vllm_sampler = VLLMSampler(tmp_path / "model", dtype="bfloat16", gpu_memory_utilization=0.3)

    def measure(sampler, seed):
        ev = Evaluator(ref_model=ref, tokenizer=tok, judge=Tie(), eval_rows=rows, heldout_rows=[], loss_name="dpo",
                       loss_params={"beta": 0.1}, max_new_tokens=max_new, temperature=1.0, batch_size="auto",
                       seed=0, sampler=sampler)
        torch.cuda.synchronize()
        start = time.perf_counter()
        est = ev.kl(policy, seed=seed)
        torch.cuda.synchronize()
        return {**summary(est, tok.eos_token_id, max_new), "kl_s": round(time.perf_counter() - start, 2),
                "batches": ev.batch_info()}

    results = {"transformers": measure(None, 1), "vllm": measure(vllm_sampler, 1)}  # the first builds the engine
    results["vllm_warm"] = measure(vllm_sampler, 3)
    # new weights (the policy moves halfway to the reference): the engine must sample them
    with torch.no_grad():
        for p, q in zip(policy.parameters(), ref.parameters()):
            p.copy_(0.5 * (p.float() + q.float()))
    results["transformers_new"] = measure(None, 5)
    results["vllm_new"] = measure(vllm_sampler, 5)
    print(json.dumps(results))

    t, v = results["transformers"], results["vllm"]
    assert 1 < t["length"] < max_new - 1, "the check needs varied lengths"
    assert t["kl_mc"] > 0.2, "the check needs policy and reference apart"
    for key in ("length", "truncated", "kl_mc", "kl_exact_token", "policy_logp"):
        assert agree(t, v, key), key
        assert agree(t, results["vllm_warm"], key), key
        assert agree(results["transformers_new"], results["vllm_new"], key), f"{key} after the weights changed"
    # and the new weights changed the distribution measurably (else the last check proves nothing)
    assert not agree(results["transformers_new"], t, "kl_exact_token")
