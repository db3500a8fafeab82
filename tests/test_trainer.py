"""Training uses exactly `daa_loss`: one real TRL training-step loss per algorithm, recomputed
through an independent log-prob path, must agree to 1e-5."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig

from alignsweep.train import models
from alignsweep.data import embedded
from alignsweep.evaluate.sequences import make_batch, sequence_logps
from alignsweep.train.losses import daa_loss
from alignsweep.train.trainer import DAATrainer

PARAMS = {
    "dpo": {"beta": 0.3},
    "ipo": {"beta": 0.3, "length_normalized": False},
    "slic": {"beta": 0.3},
    "simpo": {"beta": 2.0, "gamma": 0.4},
    "alphapo": {"beta": 2.0, "alpha": 0.7, "gamma": 0.4},
    "rdpo": {"beta": 0.3, "length_coef": 0.05},
    "orpo": {"beta": 0.2},  # reference-free: training reads no reference (TRL's DPOTrainer has no orpo to pin)
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = SimpleNamespace(
        seed=3, n_words=12, n_fillers=4, min_topics=2, max_topics=4, n_sft=1, n_train=8, n_heldout=1,
        n_eval=1, length_bias=1.0, label_noise=0.0, label_temperature=0.1,
    )
    rows = embedded.generate(cfg)["train"]
    vocab = embedded.vocabulary(cfg.n_words, cfg.n_fillers)
    tok = models.build_word_tokenizer(vocab.tokens)
    arch = SimpleNamespace(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("ref")
    models.build_tiny_model(arch, tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return rows, folder


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_training_loss_is_daa_loss(name, setup, tmp_path):
    rows, folder = setup
    policy, tok = models.load_saved(folder)
    ref, _ = models.load_saved(folder)
    torch.manual_seed(1)
    with torch.no_grad():  # make the policy differ from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True, bf16=False,
        max_length=64, disable_tqdm=True, save_strategy="no",
    )
    params = {"alpha": None, "gamma": None, **PARAMS[name]}
    trainer = DAATrainer(
        model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
        loss_name=name, loss_params=params,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    policy.eval()
    with torch.no_grad():
        trained = trainer.compute_loss(trainer.model, batch).item()

    prompts, responses = [], []
    for ids, attn, comp in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        ids = ids.tolist()
        prompts.append([t for t, a, c in zip(ids, attn.tolist(), comp.tolist()) if a and not c])
        responses.append([t for t, c in zip(ids, comp.tolist()) if c])
    b = make_batch(prompts, responses, tok.pad_token_id)
    pol, refl, lengths = sequence_logps(policy, b), sequence_logps(ref, b), b.lengths.double()
    n = len(rows)
    losses, _, _ = daa_loss(
        name, policy_chosen_logps=pol[:n].double(), policy_rejected_logps=pol[n:].double(),
        ref_chosen_logps=refl[:n].double(), ref_rejected_logps=refl[n:].double(),
        chosen_lengths=lengths[:n], rejected_lengths=lengths[n:], **params,
    )
    assert trained == pytest.approx(losses.mean().item(), abs=1e-5)
    assert trained > 0


def test_trl_ipo_is_our_length_normalized_ipo(setup, tmp_path):
    """TRL's `ipo` averages log-ratios per token; ours does so only with length_normalized=true.
    If a TRL upgrade changes that convention, this fails and the configs must be revisited."""
    from trl import DPOTrainer

    rows, folder = setup
    policy, tok = models.load_saved(folder)
    ref, _ = models.load_saved(folder)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    common = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True, bf16=False,
        max_length=64, disable_tqdm=True, save_strategy="no", beta=0.3,
    )
    ours = DAATrainer(
        model=policy, ref_model=ref, args=DPOConfig(**common), train_dataset=Dataset.from_list(rows),
        processing_class=tok, loss_name="ipo", loss_params={"beta": 0.3, "length_normalized": True},
    )
    theirs = DPOTrainer(
        model=policy, ref_model=ref, args=DPOConfig(loss_type=["ipo"], **common),
        train_dataset=Dataset.from_list(rows), processing_class=tok,
    )
    batch = next(iter(ours.get_train_dataloader()))
    policy.eval()
    with torch.no_grad():
        assert ours.compute_loss(policy, batch).item() == pytest.approx(theirs.compute_loss(policy, batch).item(), abs=1e-5)


# Each of TRL's DPOTrainer loss types that alignsweep offers, as TRL 1.16 names and configures it
# (cdpo: TRL 1.16's sigmoid has no smoothing; cdpo = 2(1-eps) sigmoid - (1-2 eps) robust, see
# tests/test_losses_peers.py), with our loss name and parameters.
EPS = 0.2
TRL_LOSSES = {
    "cdpo": ({"loss_type": ["sigmoid", "robust"], "loss_weights": [2 * (1 - EPS), -(1 - 2 * EPS)],
              "label_smoothing": EPS}, {"label_smoothing": EPS}),
    "robust_dpo": ({"loss_type": ["robust"], "label_smoothing": EPS}, {"label_smoothing": EPS}),
    "exo": ({"loss_type": ["exo_pair"], "label_smoothing": 1e-3}, {"label_smoothing": 1e-3}),
    "nca": ({"loss_type": ["nca_pair"]}, {}),
    "bco": ({"loss_type": ["bco_pair"]}, {}),
    "sppo_hard": ({"loss_type": ["sppo_hard"]}, {}),
    "apo_zero": ({"loss_type": ["apo_zero"]}, {}),
    "apo_down": ({"loss_type": ["apo_down"]}, {}),
    "discopop": ({"loss_type": ["discopop"], "discopop_tau": 0.3}, {"discopop_tau": 0.3}),
    "dpo_norm": ({"loss_type": ["sigmoid_norm"]}, {}),
    "aot": ({"loss_type": ["aot"], "label_smoothing": EPS}, {"label_smoothing": EPS}),
    "aot_unpaired": ({"loss_type": ["aot_unpaired"], "label_smoothing": EPS}, {"label_smoothing": EPS}),
}


@pytest.fixture(scope="module")
def perturbed(setup):
    """The policy 0.5 away from the reference (random directions), so every loss sees margins of
    both signs: TRL's code and ours run on the same random log-probs."""
    rows, folder = setup
    policy, tok = models.load_saved(folder)
    ref, _ = models.load_saved(folder)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    policy.eval()
    return rows, policy, ref, tok


@pytest.mark.parametrize("name", sorted(TRL_LOSSES))
def test_each_peer_loss_is_trls_own(name, perturbed, tmp_path):
    """Our `daa_loss(name)` in training equals TRL 1.16's DPOTrainer with the matching loss_type on
    the same batch to 1e-6: a TRL upgrade that changes a convention fails here."""
    from trl import DPOTrainer

    rows, policy, ref, tok = perturbed
    theirs_args, ours_params = TRL_LOSSES[name]
    common = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True, bf16=False,
        max_length=64, disable_tqdm=True, save_strategy="no", beta=0.3,
    )
    data = Dataset.from_list(rows)
    ours = DAATrainer(model=policy, ref_model=ref, args=DPOConfig(**common), train_dataset=data,
                      processing_class=tok, loss_name=name, loss_params={"beta": 0.3, **ours_params})
    theirs = DPOTrainer(model=policy, ref_model=ref, args=DPOConfig(**theirs_args, **common), train_dataset=data,
                        processing_class=tok)
    batch = next(iter(ours.get_train_dataloader()))
    with torch.no_grad():
        mine, trl = ours.compute_loss(policy, batch).item(), theirs.compute_loss(policy, batch).item()
    assert mine == pytest.approx(trl, abs=1e-6, rel=1e-6)
