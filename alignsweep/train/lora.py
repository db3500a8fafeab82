"""LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models") through the `peft`
library: `model.lora` (alignsweep.config.schema.LoRAConfig) as peft's `LoraConfig`, the reference
as the same model with its adapters disabled, and the SFT adapters merged into the base.

Why the SFT stage's output is the merged model (not the SFT adapter kept as the base): the SFT
model is the reference pi_ref and the initial policy of every DAA job, and it is cached and shared
by the jobs of a sweep. Merged, it is an ordinary checkpoint: the DAA stage adds one fresh adapter
(its update B @ A starts at zero, so pi_0 = pi_ref exactly) and "adapters disabled" is pi_ref,
with no second adapter to keep frozen and switch; the shared caches keyed by the SFT weights
(reference log-probs, step 0) and every reader of the cache (vLLM, the judge, users) see a plain
model. Merging costs one pass over the weights, once per sweep.

Under FSDP (`model.resources.strategy=fsdp`) the same holds with base and adapters sharded; an SFT
model trained sharded cannot be merged in place (its parameters are shards), so its whole state is
gathered on rank 0 and merged there by peft on a meta-device copy (`merged_from_state`); the same
under DeepSpeed ZeRO-3.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator

import torch

from alignsweep.errors import ConfigError


def peft_config(lora: Any) -> Any:
    """peft's `LoraConfig` for `model.lora` (r, alpha -> lora_alpha, dropout -> lora_dropout,
    target_modules: "all-linear" or a list of module names), for a causal language model."""
    from peft import LoraConfig

    targets = lora.target_modules
    targets = str(targets) if isinstance(targets, str) else [str(t) for t in targets]
    return LoraConfig(
        r=int(lora.r), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
        target_modules=targets, bias="none", task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def named_target_errors(model_name: str) -> Iterator[None]:
    """peft's refusal of `model.lora.target_modules` (no layer matched, or a matched layer LoRA
    cannot adapt), raised when adapters are added to a model whose layers were not known at compose
    time (`alignsweep.config.lora_targets`), as a ConfigError naming the key (exit 2, no traceback)."""
    from peft.utils.error import PeftError

    try:
        yield
    except (PeftError, ValueError) as exc:
        if not isinstance(exc, PeftError) and "Target module" not in str(exc):
            raise
        raise ConfigError(
            f"model.lora.target_modules: {str(exc).strip().splitlines()[0]} (model={model_name}); name layers "
            "this model has (printed by `print(model)` in transformers), or use model.lora.target_modules=all-linear"
        ) from exc


def is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


class AdaptersDisabled:
    """The base model of a `PeftModel` as a model of its own: every call runs the same module (the
    same weights in memory) with its adapters disabled (peft's `disable_adapter`), without gradients
    and in evaluation mode (restored after). What the evaluator, the KL estimate and step 0 use as
    the reference under LoRA; every other attribute is the PeftModel's."""

    def __init__(self, model: Any):
        self.model = model

    @contextlib.contextmanager
    def _disabled(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                yield
        finally:
            if was_training:
                self.model.train()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._disabled():
            return self.model(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._disabled():
            return self.model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)


def base_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The base weights of a `PeftModel` under the plain model's names (`base_model.model.` and
    `.base_layer` dropped, the adapters' `lora_` tensors left out): the same names and tensors as
    the state dict of the model it was made from (the same storages, nothing copied)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        state[name] = tensor
    return state


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order, as TRL's `hash_module` hashes a module's state dict
    (so the base of a LoRA model and the plain model of the same weights get the same key)."""
    digest = hashlib.sha256()
    for _, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu()
        digest.update(str(tensor.dtype).encode())
        if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            tensor = tensor.to(torch.float32)
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def merged(model: Any) -> Any:
    """The plain model with the adapters' updates added into its weights (peft's `merge_and_unload`)."""
    return model.merge_and_unload()


def merged_from_state(state: dict[str, torch.Tensor], config: Any, lora_config: Any) -> tuple[Any, dict]:
    """(plain model, its state dict): the adapters' updates in `state` (a PeftModel's whole state
    dict gathered from FSDP shards on one rank: `base_model.model.` names, `lora_A/B` tensors)
    merged into its base weights by peft's own `merge_and_unload`, on a model of `config` built
    on the meta device and given `state`'s tensors (no second copy of the weights, no random
    initialisation). A sharded model cannot be merged in place: its parameters are shards.

    Raises RuntimeError when `state` is not exactly that PeftModel's (a missing or extra tensor)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(config), lora_config)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"the gathered LoRA state is not the model's: missing {result.missing_keys[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    plain = model.merge_and_unload()
    weights = plain.state_dict()
    on_meta = [name for name, tensor in weights.items() if tensor.is_meta]
    if on_meta:
        raise RuntimeError(f"merging the gathered LoRA state left tensors without values: {on_meta[:3]}")
    return plain, weights


def held_memory(policy: Any, ref: Any, optimizer: Any = None) -> dict:
    """What the job's models hold, in bytes and parameters: `weights_bytes` counts each tensor
    storage of the policy and the reference once (a reference that shares the policy's storages,
    as under LoRA, adds nothing), `gradients_bytes` the trainable parameters' gradients during a
    step, `optimizer_bytes` the optimizer's state tensors; under sharding each counts this rank's
    shard (FSDP2's local tensor, DeepSpeed ZeRO-3's partition). `parameters` / `trainable` count
    the policy's whole (unsharded) parameters."""
    def local(tensor: torch.Tensor) -> torch.Tensor:  # this rank's shard: FSDP2 DTensor, ZeRO-3 partition
        return tensor.to_local() if hasattr(tensor, "to_local") else getattr(tensor, "ds_tensor", tensor)

    storages: dict[int, int] = {}
    for model in (policy, ref):
        if model is None:
            continue
        for tensor in model.parameters():
            storage = local(tensor).untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    params = list(policy.parameters())
    grads = sum(local(p).nbytes for p in params if p.requires_grad)  # held during each step (freed between)
    state = 0
    if optimizer is not None:
        for entry in optimizer.state.values():
            state += sum(local(v).nbytes for v in entry.values() if torch.is_tensor(v) and v.dim() > 0)  # not `step`
    return {
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in params),  # ZeRO-3: the whole tensor's
        "trainable": sum(getattr(p, "ds_numel", p.numel()) for p in params if p.requires_grad),
        "weights_bytes": sum(storages.values()), "gradients_bytes": grads, "optimizer_bytes": state,
    }
