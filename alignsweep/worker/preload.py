"""What every worker imports, imported once by the local launcher's fork server
(`alignsweep.worker_pool`): its jobs are forked from a process that has paid for these imports
(about 4 s of torch, transformers, TRL and datasets here) instead of each paying for them again.

Importing starts no thread and touches no GPU, so forking afterwards is safe; nothing here runs.
"""

import datasets  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
import trl  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM, LlamaForCausalLM  # noqa: F401
from trl import DPOConfig, DPOTrainer  # noqa: F401

from alignsweep import (  # noqa: F401
    checkpoint_callback,
    evaluation,
    judges,
    models,
    sft,
    shared_data,
    sharding,
    sweep_cache,
    trainer,
    worker,
)
