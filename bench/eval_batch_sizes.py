"""Time one checkpoint evaluation at several `eval.batch_size` settings on this machine.

    python bench/eval_batch_sizes.py [SFT_DIR] [--sizes 1,8,32,64,256,auto] [--threads N]

SFT_DIR: a saved model folder (e.g. a job's `sft_model` from status.json); without it, the
embedded_tiny architecture at random initialisation (whose samples mostly run to max_new_tokens,
the slowest case). Evaluates the embedded task's 256 prompts and 255 held-out pairs (policy =
reference = the model: the timing does not depend on the weights), prints one JSON line per
setting with the sizes used, the set-up and per-checkpoint seconds, and checks the samples are identical.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from alignsweep.train import models
from alignsweep.data import embedded
from alignsweep.evaluate.evaluator import Evaluator
from alignsweep.evaluate.judges import GoldJudge


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sft_dir", nargs="?")
    parser.add_argument("--sizes", default="1,8,32,64,256,auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task_cfg = SimpleNamespace(
        seed=0, n_words=24, n_fillers=8, min_topics=3, max_topics=6, n_sft=1, n_train=1, n_heldout=256,
        n_eval=256, length_bias=1.2, label_noise=0.1, label_temperature=0.1,
    )  # conf/data/embedded.yaml's task
    task = embedded.generate(task_cfg)
    if args.sft_dir:
        model, tok = models.load_saved(args.sft_dir)
    else:
        tok = models.build_word_tokenizer(embedded.vocabulary(24, 8).tokens)
        arch = SimpleNamespace(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, max_position_embeddings=64)
        model = models.build_tiny_model(arch, tok, seed=0)
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    heldout = [r for r in task["heldout"] if r["chosen"].strip() and r["rejected"].strip()]
    reference_samples = None
    for setting in args.sizes.split(","):
        size = setting if setting == "auto" else int(setting)
        start = time.perf_counter()
        ev = Evaluator(
            ref_model=model, tokenizer=tok, judge=GoldJudge(), eval_rows=task["eval"], heldout_rows=heldout,
            loss_name="dpo", loss_params={"beta": 0.1}, max_new_tokens=16, temperature=1.0, batch_size=size, seed=0,
        )
        setup_s = time.perf_counter() - start  # once per run: the reference's log-probs of the held-out pairs
        times = []
        for _ in range(args.repeat):  # each checkpoint
            start = time.perf_counter()
            row = ev.evaluate(model, step=0)
            times.append(time.perf_counter() - start)
        samples = ev.kl(model, seed=0)["responses"]
        reference_samples = reference_samples or samples
        print(json.dumps({
            "batch_size": setting, "chosen": ev.batch_info(), "setup_s": round(setup_s, 2),
            "eval_s": [round(t, 2) for t in times],
            "response_length": round(row["response_length"], 3), "same_samples": samples == reference_samples,
            "device": device, "threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main()
