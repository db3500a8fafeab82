"""`python -m alignsweep bench-gpu` (`make bench-gpu`): DPO training throughput and MFU on one GPU.

One DPO training step for the Pythia-2.8B architecture (weights randomly initialised from the
architecture: throughput does not depend on them), in bf16, with the per-device batch, gradient
accumulation and gradient checkpointing of `conf/model/pythia_2_8b.yaml` and sequences of the
TL;DR data's `max_length`, through alignsweep's trainer and through a plain TRL `DPOTrainer`,
side by side in one run (alternated). Reported per variant:

- tokens/s: (chosen + rejected) tokens trained per second, padding included, over the timed
  steps (the first `--warmup` steps are not timed);
- MFU: model FLOPs per second over the device's peak dense bf16 FLOP/s. Model FLOPs per trained
  token follow PaLM's count: 6N + 12 L H S for the policy's forward and backward (N non-embedding
  parameters, L layers, H hidden size, S sequence length) plus 2N + 4 L H S for the reference's
  forward when it runs; recomputation by gradient checkpointing is not counted (it is not model
  FLOPs). With `--lora` a third variant trains LoRA adapters (`lora=default`) through alignsweep's
  trainer, the reference being the policy with its adapters disabled: 4N instead of 6N for the
  policy (no weight gradients of the frozen base).

Writes bench/gpu_results.json and the section between the bench-gpu markers in BENCHMARKS.md.
`--tiny` runs the embedded tiny architecture on whatever device there is, for a check that the
script works (what CI does); its numbers mean nothing.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from alignsweep.cli_style import tool_parser

ROOT = Path(__file__).resolve().parents[2]
MARK_BEGIN, MARK_END = "<!-- bench-gpu:begin -->", "<!-- bench-gpu:end -->"

# Public architectures of the Pythia suite (EleutherAI), as in their config.json files.
PYTHIA = {
    "pythia_1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192,
                      vocab_size=50304),
    "pythia_2_8b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240,
                        vocab_size=50304),
    "pythia_6_9b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384,
                        vocab_size=50432),
}
# Peak dense bf16 tensor FLOP/s by device name (vendor data sheets, without sparsity).
PEAK_BF16 = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.0e12,
             "H100 NVL": 835.0e12, "H100": 989.4e12, "A100": 312.0e12, "L40S": 362.0e12, "A10": 125.0e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # most specific names first
        if key in device_name:
            return value
    return None


def model_flops_per_token(n_params: int, layers: int, hidden: int, seq: int, reference: bool,
                          lora: bool = False) -> float:
    # LoRA: no weight gradients of the frozen base (2N fewer); the adapters' own FLOPs are negligible
    policy = (4 if lora else 6) * n_params + 12 * layers * hidden * seq
    ref = 2 * n_params + 4 * layers * hidden * seq if reference else 0
    return float(policy + ref)


def _compose(model: str, data: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from alignsweep.config.schema import register

    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", f"data={data}", "logger=none"])
    return OmegaConf.to_container(cfg, resolve=False)


def _tokenizer(vocab_size: int):
    from alignsweep.data import embedded
    from alignsweep.train.models import build_word_tokenizer

    specials = [embedded.PAD, embedded.EOS, embedded.UNK]
    return build_word_tokenizer(specials + [f"w{i}" for i in range(vocab_size - len(specials))])


def _dataset(n: int, prompt_len: int, response_len: int, vocab_size: int, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)

    def text(k: int) -> str:
        return " " + " ".join(f"w{rng.randrange(vocab_size - 3)}" for _ in range(k))

    rows = [{"prompt": text(prompt_len).lstrip(), "chosen": text(response_len), "rejected": text(response_len)}
            for _ in range(n)]
    return Dataset.from_list(rows)


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._t = 0.0

        def _sync(self):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_step_begin(self, args, state, control, **kwargs):
            self._sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def run_variant(which: str, spec: dict, work: Path) -> dict:
    """Train `spec['steps']` optimizer steps with `which` in {alignsweep, trl}; time each step."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from trl import DPOConfig, DPOTrainer

    from alignsweep.train.trainer import DAATrainer

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and spec["dtype"] == "bfloat16" else torch.float32
    tok = _tokenizer(spec["arch"]["vocab_size"])
    config = GPTNeoXConfig(**spec["arch"], max_position_embeddings=max(2048, spec["seq"]), rotary_pct=0.25,
                           use_parallel_residual=True, tie_word_embeddings=False,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    lora = which == "alignsweep_lora"
    policy = GPTNeoXForCausalLM(config).to(dtype)
    ref = None if lora else GPTNeoXForCausalLM(config).to(dtype)  # LoRA: the policy with adapters disabled
    pairs = spec["batch"] * spec["grad_accum"] * (spec["steps"] + spec["warmup"])
    data = _dataset(pairs, spec["prompt_len"], spec["response_len"], spec["arch"]["vocab_size"])
    device = {"bf16": dtype == torch.bfloat16} if cuda else {"use_cpu": True, "bf16": False}
    args = DPOConfig(
        output_dir=str(work / which), per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=spec["grad_accum"], activation_checkpointing=spec["gradient_checkpointing"],
        learning_rate=1e-7, max_steps=spec["steps"] + spec["warmup"], max_length=spec["seq"], beta=0.1,
        save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10_000, seed=0, **device,
    )
    common = dict(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    if lora:
        from omegaconf import OmegaConf

        from alignsweep.train.lora import peft_config

        conf = OmegaConf.load(ROOT / "conf" / "lora" / "default.yaml")  # lora=default
        trainer = DAATrainer(**common, loss_name="dpo", loss_params={"beta": 0.1}, peft_config=peft_config(conf))
    elif which == "alignsweep":
        trainer = DAATrainer(**common, loss_name="dpo", loss_params={"beta": 0.1})
    else:
        trainer = DPOTrainer(**common)
    timer = _step_timer()
    trainer.add_callback(timer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = timer.times[spec["warmup"]:]
    tokens_per_step = spec["batch"] * spec["grad_accum"] * 2 * spec["seq"]
    n_params = sum(p.numel() for n, p in policy.named_parameters() if "embed" not in n and "lora_" not in n)
    per_token = model_flops_per_token(n_params, spec["arch"]["num_hidden_layers"], spec["arch"]["hidden_size"],
                                      spec["seq"], reference=True, lora=lora)
    step_s = statistics.median(timed)
    result = {
        "variant": which, "step_s": timed, "median_step_s": step_s, "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s, "non_embedding_params": n_params,
        "model_flops_per_token": per_token, "achieved_tflops": tokens_per_step * per_token / step_s / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    del trainer, policy, ref
    if cuda:
        torch.cuda.empty_cache()
    return result


def render(results: dict) -> str:
    lines = [MARK_BEGIN, f"Measured {results['date']} on {results['device']}"
             + (" (--tiny: a check that the script runs; the numbers mean nothing)" if results["tiny"] else "") + ".",
             "", f"Model: {results['model']} architecture, {results['dtype']}, per-device batch {results['batch']} x "
             f"grad accum {results['grad_accum']}, sequence {results['seq']} tokens, gradient checkpointing "
             f"{'on' if results['gradient_checkpointing'] else 'off'}; {results['steps']} timed steps after "
             f"{results['warmup']} warm-up.", "",
             "| trainer | step (s) | tokens/s | TFLOP/s | MFU | peak memory |", "|---|---|---|---|---|---|"]
    for r in results["variants"]:
        mfu = f"{r['mfu'] * 100:.1f}%" if r.get("mfu") is not None else "n/a (unknown peak)"
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "-"
        lines.append(f"| {r['variant']} | {r['median_step_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['achieved_tflops']:.1f} | {mfu} | {mem} |")
    lines += ["", f"alignsweep / plain TRL step time: **{results['ratio']:.3f}x**. Reproduce with `make bench-gpu`.",
              MARK_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep bench-gpu", __doc__)
    parser.add_argument("--model", default="pythia_2_8b", choices=sorted(PYTHIA))
    parser.add_argument("--data", default="tldr", help="data config whose max_length sets the sequence length")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--grad-accum", type=int, default=None, help="override the model config's grad_accum")
    parser.add_argument("--tiny", action="store_true", help="embedded tiny architecture: check the script runs")
    parser.add_argument("--lora", action="store_true", help="also alignsweep's trainer with LoRA (lora=default)")
    parser.add_argument("--out", default="outputs/bench", help="folder for gpu_results.json (default: %(default)s; make bench-gpu: bench/)")
    parser.add_argument("--markdown", default=None,
                        help="a file whose bench-gpu section to update (make bench-gpu: BENCHMARKS.md); default: none")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("error: no CUDA device here; this benchmark needs a GPU (use --tiny to check the script on CPU)",
              file=sys.stderr)
        return 2
    model = "embedded_tiny" if args.tiny else args.model
    cfg = _compose(model, "embedded" if args.tiny else args.data)
    m = cfg["model"]
    arch = (dict(hidden_size=m["arch"]["hidden_size"], num_hidden_layers=m["arch"]["num_layers"],
                 num_attention_heads=m["arch"]["num_heads"], intermediate_size=m["arch"]["intermediate_size"],
                 vocab_size=64) if args.tiny else PYTHIA[model])
    seq = int(cfg["data"]["max_length"])
    response = max(2, seq // 8)  # TL;DR: a long post, a short summary
    spec = {"arch": arch, "dtype": m["dtype"], "batch": m["per_device_batch"],
            "grad_accum": args.grad_accum or m["grad_accum"], "gradient_checkpointing": m["gradient_checkpointing"],
            "seq": seq, "prompt_len": seq - response - 2, "response_len": response, "steps": args.steps,
            "warmup": args.warmup}
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    peak = peak_flops(device) if cuda else None
    variants = {}
    with tempfile.TemporaryDirectory(prefix="alignsweep-bench-gpu-") as work:
        for which in ("trl", "alignsweep", *(("alignsweep_lora",) if args.lora else ())):
            print(f"[bench-gpu] {which} ...", flush=True)
            variants[which] = run_variant(which, spec, Path(work))
    for r in variants.values():
        r["mfu"] = r["achieved_tflops"] * 1e12 / peak if peak else None
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device, "tiny": args.tiny,
        "peak_bf16_flops": peak, "model": model, "dtype": spec["dtype"], "batch": spec["batch"],
        "grad_accum": spec["grad_accum"], "seq": seq, "gradient_checkpointing": spec["gradient_checkpointing"],
        "steps": args.steps, "warmup": args.warmup, "variants": list(variants.values()),
        "ratio": variants["alignsweep"]["median_step_s"] / variants["trl"]["median_step_s"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("gpu_results_tiny.json" if args.tiny else "gpu_results.json")).write_text(json.dumps(results, indent=1))
    section = render(results)
    if not args.tiny and args.markdown:
        from alignsweep.bench.overhead import write_section

        write_section(Path(args.markdown), section, MARK_BEGIN, MARK_END)
    print(section)
    return 0


if __name__ == "__main__":
    from alignsweep.cli_style import run_tool

    sys.exit(run_tool(main, sys.argv[1:]))
