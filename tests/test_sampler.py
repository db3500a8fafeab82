"""eval.sampler: which sampler a job uses, the error for vllm where it cannot run, and the vLLM glue.

vLLM itself cannot be installed on the development machines (no GPU); `test_the_vllm_glue...`
checks alignsweep's side of it against a stand-in module with the few names alignsweep calls
(LLM, SamplingParams, sleep/wake_up, the engine's model.load_weights), written from vLLM's source.
It shows what alignsweep asks of vLLM and does with its answers, not that vLLM answers so:
tests/test_eval_gpu.py does that on a machine with a GPU and vLLM.
"""

from __future__ import annotations

import random
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from alignsweep.train import models

from alignsweep.results import rundir

from alignsweep.evaluate import vllm_sampler as sampling_vllm
from alignsweep.data import embedded
from alignsweep.evaluate.evaluator import Evaluator
from alignsweep.evaluate.sequences import make_batch, prompt_seed, sequence_logps
from alignsweep.errors import ConfigError
from alignsweep.evaluate.vllm_sampler import VLLMSampler, resolve_sampler

ARCH = SimpleNamespace(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
TASK = SimpleNamespace(
    seed=0, n_words=12, n_fillers=4, min_topics=2, max_topics=4, n_sft=1, n_train=1, n_heldout=1,
    n_eval=20, length_bias=1.0, label_noise=0.0, label_temperature=0.1,
)


def test_auto_is_transformers_without_vllm_and_vllm_is_refused_with_the_key_named(monkeypatch):
    # the development machines have neither vLLM nor CUDA; elsewhere pretend so
    monkeypatch.setattr(sampling_vllm, "vllm_installed", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_sampler("auto") == "transformers" and resolve_sampler("transformers") == "transformers"
    with pytest.raises(ConfigError, match=r"^eval.sampler=vllm: vLLM is not installed"):
        resolve_sampler("vllm")
    with pytest.raises(ConfigError, match="^eval.sampler: expected"):
        resolve_sampler("vlm")
    monkeypatch.setattr(sampling_vllm, "vllm_installed", lambda: True)
    with pytest.raises(ConfigError, match=r"^eval.sampler=vllm: this job sees no CUDA GPU"):
        resolve_sampler("vllm")
    assert resolve_sampler("auto") == "transformers"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_sampler("auto") == "vllm" and resolve_sampler("vllm") == "vllm"
    assert resolve_sampler("auto", world_size=2) == "transformers"
    with pytest.raises(ConfigError, match=r"^eval.sampler=vllm: a job of 2 processes"):
        resolve_sampler("vllm", world_size=2)


@pytest.mark.skipif(sampling_vllm.vllm_installed(), reason="vLLM is installed here")
def test_a_job_asking_for_vllm_here_stops_at_start_with_exit_code_2(cli):
    assert cli("eval.sampler=vllm", "dry_run=true").returncode == 0  # composing needs no GPU (a login node)
    proc = cli("eval.sampler=vllm", "logger=none", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: eval.sampler=vllm: vLLM is not installed")
    assert "Traceback" not in proc.stderr
    # the dry run above may have its own run directory (a different second): take the job's
    run = next(p for p in cli.cwd.glob("outputs/runs/*") if (p / rundir.STATUS).exists())
    status = rundir.read_status(run)
    assert status["state"] == "failed" and "eval.sampler=vllm" in status["error"]
    assert "data" not in status and "sft_model" not in status  # stopped before reading data or building SFT
    bad = cli("eval.sampler=vlm", "dry_run=true", check=False)
    assert bad.returncode == 2 and "eval.sampler: expected one of auto, transformers, vllm" in bad.stderr


class FakeVLLM:
    """The names alignsweep uses from vllm. Draws are a function of each request's seed alone."""

    def __init__(self, eos_id: int, vocab: int):
        self.eos_id, self.vocab, self.engines = eos_id, vocab, []
        module = types.ModuleType("vllm")
        module.LLM = self._llm_class()
        module.SamplingParams = lambda **kw: SimpleNamespace(**kw)
        self.module = module

    def _llm_class(self):
        fake = self

        class LLM:
            def __init__(self, model, **kwargs):
                self.model, self.kwargs, self.events, self.loaded = model, kwargs, [], {}
                runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load))
                self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)))
                fake.engines.append(self)

            def _load(self, weights):
                for name, tensor in weights:
                    self.loaded[name] = tensor.clone()
                self.events.append("load")

            def sleep(self, level):
                self.events.append(f"sleep{level}")

            def wake_up(self, tags):
                self.events.append("wake:" + ",".join(tags))

            def reset_prefix_cache(self):
                self.events.append("reset")

            def generate(self, prompts, sampling_params, use_tqdm):
                self.events.append("generate")
                self.requests = list(zip(prompts, sampling_params))
                outputs = []
                for p in sampling_params:
                    rng = random.Random(p.seed)
                    n = rng.randint(0, p.max_tokens)
                    tokens = [rng.choice([t for t in range(3, fake.vocab) if t != fake.eos_id]) for _ in range(n)]
                    if n < p.max_tokens:  # stopped at EOS: vLLM keeps it; every third request as if a version dropped it
                        finish = "stop"
                        tokens += [] if p.seed % 3 == 0 else [fake.eos_id]
                    else:
                        finish = "length"
                    outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens, finish_reason=finish)]))
                return outputs

        return LLM


def test_the_vllm_glue_pushes_current_weights_seeds_per_prompt_and_scores_with_transformers(monkeypatch, tmp_path):
    vocab = embedded.vocabulary(12, 4)
    tok = models.build_word_tokenizer(vocab.tokens)
    ref = models.build_tiny_model(ARCH, tok, seed=0).eval()
    policy = models.build_tiny_model(ARCH, tok, seed=1).eval()
    fake = FakeVLLM(tok.eos_token_id, len(tok))
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # restored afterwards
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    rows = embedded.generate(TASK)["eval"][:20]
    sampler = VLLMSampler(tmp_path, dtype="float32", gpu_memory_utilization=0.25)
    ev = Evaluator(
        ref_model=ref, tokenizer=tok, judge=SimpleNamespace(compare=lambda p, s, r: [0.5] * len(s)), eval_rows=rows,
        heldout_rows=[], loss_name="dpo", loss_params={"beta": 0.1}, max_new_tokens=6, temperature=0.7,
        batch_size="auto", seed=4, sampler=sampler,
    )
    est = ev.kl(policy, seed=9)
    (engine,) = fake.engines
    longest = max(len(p) for p in ev.prompt_ids)
    assert engine.model == str(tmp_path) and engine.kwargs["max_model_len"] == longest + 6
    assert engine.kwargs["skip_tokenizer_init"] and engine.kwargs["enable_sleep_mode"]
    assert engine.kwargs["distributed_executor_backend"] == "external_launcher"
    assert engine.kwargs["dtype"] == "float32" and engine.kwargs["gpu_memory_utilization"] == 0.25
    # the policy's current weights, every parameter, then sampling, then sleep
    assert engine.loaded.keys() == dict(policy.named_parameters()).keys()
    assert all(torch.equal(engine.loaded[n], p) for n, p in policy.named_parameters())
    assert engine.events == ["load"] * len(engine.loaded) + ["reset", "generate", "sleep2"]
    for i, (prompt, params) in enumerate(engine.requests):
        assert prompt == {"prompt_token_ids": ev.prompt_ids[i]}
        assert params.seed == prompt_seed(9, i) and params.temperature == 0.7 and params.max_tokens == 6
        assert params.ignore_eos and params.stop_token_ids == [tok.eos_token_id] and params.detokenize is False
        assert params.top_p == 1.0 and params.min_p == 0.0 and params.repetition_penalty == 1.0 and params.n == 1
    # responses as the transformers sampler returns them: EOS kept (or restored) when it stopped there
    for r in est["responses"]:
        assert (r[-1] == tok.eos_token_id) != (len(r) == 6 and tok.eos_token_id not in r)
    # scored by the transformers path, as for transformers samples
    batch = make_batch(ev.prompt_ids, est["responses"], tok.pad_token_id)
    direct = (sequence_logps(policy, batch) - sequence_logps(ref, batch)).mean().item()
    assert est["kl_mc"] == pytest.approx(direct, abs=1e-5)
    # a later evaluation wakes the engine, pushes the new weights and samples with the new seeds
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    engine.events.clear()
    row = ev.evaluate(policy, step=3)
    assert engine.events[:2] == ["wake:weights"] + ["load"] and engine.events[-4:] == ["wake:kv_cache", "reset", "generate", "sleep2"]
    assert all(torch.equal(engine.loaded[n], p) for n, p in policy.named_parameters())
    assert [params.seed for _, params in engine.requests] == [prompt_seed(4 + 3, i) for i in range(20)]
    assert ev.batch_info()["sampler"] == "vllm" and "generate" not in ev.batch_info()
    assert row["n_eval"] == 20 and len(fake.engines) == 1
