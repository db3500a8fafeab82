"""What every worker imports, imported once by the local launcher's fork server
(`alignsweep.launch.local_pool`): its jobs are forked from a process that has paid for these imports
(about 4 s of torch, transformers, TRL and datasets here) instead of each paying for them again.

Importing starts no thread and touches no GPU, so forking afterwards is safe; nothing here runs.
"""

import datasets  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
import trl  # noqa: F401
from transformers import (  # noqa: F401
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXForCausalLM,
    LlamaForCausalLM,
)
from trl import DPOConfig, DPOTrainer  # noqa: F401

from alignsweep.cache import store  # noqa: F401
from alignsweep.data import shared  # noqa: F401
from alignsweep.evaluate import evaluator, judges  # noqa: F401
from alignsweep.train import checkpoints, models, sft, sharding, trainer  # noqa: F401
from alignsweep.worker import job, pipeline  # noqa: F401
