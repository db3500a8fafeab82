"""KTO (Ethayarajh et al. 2024): hand-computed values from eq. 7, its limit (APO-zero at z = 0),
its data path (pairs split into unpaired examples, mismatched pairs within a micro-batch), and
TRL 1.16's own KTOTrainer loss on the same random inputs; an end-to-end run (slow)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignsweep.train.losses import daa_loss, implicit_reward, kto_reference_point

from .test_losses_peers import T, call, sig  # the same two pairs and helpers as the peer losses


def test_kto_by_hand():
    # z = 0.4: desirable 1 - sig(0.5 (c - 0.4)), undesirable 1 - sig(0.5 (0.4 - r)); pair = their mean
    out, chosen, rejected = call("kto", kl_reference_point=T(0.4))
    assert out.tolist() == pytest.approx([
        ((1 - sig(0.5 * 0.6)) + (1 - sig(0.5 * 1.4))) / 2, ((1 - sig(0.5 * -0.4)) + (1 - sig(0.5 * -0.6))) / 2])
    assert chosen.tolist() == pytest.approx([0.5, 0.0]) and rejected.tolist() == pytest.approx([-0.5, 0.5])
    out = call("kto", kl_reference_point=T(0.4), desirable_weight=2.0, undesirable_weight=0.5)[0]
    assert out.tolist() == pytest.approx([
        (2 * (1 - sig(0.3)) + 0.5 * (1 - sig(0.7))) / 2, (2 * (1 - sig(-0.2)) + 0.5 * (1 - sig(-0.3))) / 2])


def test_kto_reference_point_is_the_clamped_detached_mean():
    policy = T(-3.0, -5.0, -2.0).requires_grad_()
    z = kto_reference_point(policy, T(-4.0, -4.0, -4.0))  # log-ratios 1, -1, 2: mean 2/3
    assert z.item() == pytest.approx(2 / 3) and not z.requires_grad
    assert kto_reference_point(T(-5.0, -6.0), T(-4.0, -4.0)).item() == 0.0  # mean -1.5, clamped at 0


def test_kto_at_a_zero_reference_point_is_half_apo_zero():
    """z = 0, unit weights: (1 - sig(beta c) + 1 - sig(-beta r)) / 2 = apo_zero / 2, the unpaired
    APO-zero of D'Oosterlinck et al. 2024 (TRL's `apo_zero_unpaired`: KTO without its KL term)."""
    gen = torch.Generator().manual_seed(1)
    logps = {k: -torch.rand(32, generator=gen, dtype=torch.float64) * 20 for k in ("pc", "pr", "rc", "rr")}
    kw = dict(policy_chosen_logps=logps["pc"], policy_rejected_logps=logps["pr"], ref_chosen_logps=logps["rc"],
              ref_rejected_logps=logps["rr"], chosen_lengths=torch.ones(32), rejected_lengths=torch.ones(32), beta=0.3)
    kto = daa_loss("kto", kl_reference_point=torch.zeros(()), **kw)
    apo = daa_loss("apo_zero", **kw)
    assert torch.allclose(kto[0], apo[0] / 2, atol=1e-12)
    assert torch.allclose(kto[1], apo[1]) and torch.allclose(kto[2], apo[2])


def test_kto_needs_its_reference_point_and_its_reward_is_dpos():
    with pytest.raises(ValueError, match="reference point"):
        call("kto")
    logps, ref, lengths = T(-6.0, -2.0), T(-5.0, -3.0), T(3.0, 2.0)
    got = implicit_reward("kto", policy_logps=logps, ref_logps=ref, lengths=lengths, beta=0.5,
                          desirable_weight=2.0, undesirable_weight=1.0)
    assert torch.allclose(got, 0.5 * (logps - ref))


# --- the data path: mismatched pairs within a micro-batch -----------------------------------------


def test_kl_partners_rotate_within_chunks():
    from alignsweep.train.kto import kl_partners

    assert kl_partners(7, 3) == [2, 0, 1, 5, 3, 4, 5]  # chunks (0 1 2)(3 4 5)(6): the single last one takes 5
    assert kl_partners(4, 2) == [1, 0, 3, 2]


def test_every_micro_batch_is_a_chunk_whose_mismatched_completions_are_its_own():
    from alignsweep.train.kto import ChunkSampler, kl_partners

    size, chunk = 23, 4
    partners = kl_partners(size, chunk)
    orders = []
    for epoch in (0, 1):
        sampler = ChunkSampler(size, chunk, seed=3)
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(size))
        batches = [order[i:i + chunk] for i in range(0, size, chunk)]
        for batch in batches:
            assert {partners[i] for i in batch} == set(batch)  # a permutation of the batch's own pairs
            assert all(partners[i] != i for i in batch)  # every prompt mismatched
        orders.append(order)
    assert orders[0] != orders[1] and orders[0] == list(ChunkSampler(size, chunk, seed=3))  # (seed, epoch) only


# --- TRL's own KTOTrainer loss --------------------------------------------------------------------


class TableModel:
    """A causal LM stand-in with the interface TRL's fused head gives the trainers: the log-prob of
    each label token is table[token] (0 where the label is -100). Lets TRL's KTOTrainer._compute_loss
    and alignsweep's trainer read the same log-probs from their own collated batches."""

    def __init__(self, table):
        self.table = table

    def __call__(self, input_ids, labels, **_):
        shifted = labels[:, 1:]
        log_probs = torch.where(shifted == -100, 0.0, self.table[shifted.clamp(min=0)])
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros)


def _random_pairs(gen, n, vocab):
    def ids(lo, hi):
        return torch.randint(1, vocab, (int(torch.randint(lo, hi, (1,), generator=gen)),), generator=gen).tolist()

    return [{"prompt_ids": ids(1, 6), "chosen_ids": ids(1, 8), "rejected_ids": ids(1, 8)} for _ in range(n)]


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.3, 0.7)])
def test_kto_is_trls_kto_trainer_loss(weights):
    """The same pairs through TRL 1.16's KTOTrainer._compute_loss (split by trl.data_utils'
    unpair_preference_dataset, its mismatched completions rotated by one within the batch as its
    `_prepare_dataset` does, its collator) and through alignsweep's (kl columns, KLCollator,
    sequence_logps, kto_reference_point, daa_loss): loss and z agree to 1e-6 on random log-probs,
    with z > 0 and z clamped to 0."""
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference, KTOTrainer

    from alignsweep.train.kto import KLCollator, with_kl_completions
    from alignsweep.train.trainer import DAATrainer

    gen = torch.Generator().manual_seed(0)
    vocab, n, beta = 50, 6, 0.2
    pairs = _random_pairs(gen, n, vocab)
    for shift in (2.0, -2.0):  # policy above the reference on average (z > 0), then below (z clamped to 0)
        ref_table = -torch.rand(vocab, generator=gen, dtype=torch.float64) * 4
        policy_table = (ref_table + shift * torch.rand(vocab, generator=gen, dtype=torch.float64)).clamp(max=-1e-3)
        policy, ref = TableModel(policy_table), TableModel(ref_table)

        # TRL: unpaired rows [desirable 1..n, undesirable 1..n], KL completions rotated by +1 in the batch
        unpaired = unpair_preference_dataset(Dataset.from_list(
            [{"prompt": p["prompt_ids"], "chosen": p["chosen_ids"], "rejected": p["rejected_ids"]} for p in pairs]))
        rows = [{"prompt_ids": r["prompt"], "completion_ids": r["completion"], "label": r["label"]} for r in unpaired]
        completions = [r["completion_ids"] for r in rows]
        for row, kl in zip(rows, [completions[-1]] + completions[:-1]):  # TRL's add_kl_completion_ids
            row["KL_completion_ids"] = kl
        batch = DataCollatorForUnpairedPreference(pad_token_id=0)(rows)
        labels = lambda ids, mask: ids.masked_fill(mask == 0, -100)  # noqa: E731
        batch["ref_logps"] = ref(batch["input_ids"], labels(batch["input_ids"], batch["completion_mask"])).log_probs.sum(-1)
        batch["ref_KL_logps"] = ref(batch["KL_input_ids"], labels(batch["KL_input_ids"], batch["KL_completion_mask"])
                                    ).log_probs.sum(-1)
        me = SimpleNamespace(
            beta=beta, loss_type="kto", desirable_weight=weights[0], undesirable_weight=weights[1], calculate_KL=True,
            precompute_ref_logps=True, aux_loss_enabled=False, _tp_size=1, _total_train_tokens=0,
            _metrics={"train": defaultdict(list)}, model=SimpleNamespace(training=True),
            accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x),
        )
        me._compute_kl_logps = lambda model, b: KTOTrainer._compute_kl_logps(me, model, b)
        theirs = KTOTrainer._compute_loss(me, policy, batch, return_outputs=False)
        their_z = me._metrics["train"]["kl"][-1]

        # alignsweep: the pairs as one chunk (one micro-batch), through the trainer's own pieces
        ours_rows = with_kl_completions(Dataset.from_list(pairs), chunk=n).to_list()
        collated = KLCollator(DataCollatorForPreference(pad_token_id=0))(ours_rows)
        logps, _ = DAATrainer.sequence_logps(None, policy, collated)
        ref_logps, _ = DAATrainer.sequence_logps(None, ref, collated)
        mismatched = {k[3:]: v for k, v in collated.items() if k.startswith("kl_")}
        z = kto_reference_point(DAATrainer.sequence_logps(None, policy, mismatched)[0],
                                DAATrainer.sequence_logps(None, ref, mismatched)[0])
        (pc, pr), (rc, rr) = logps.chunk(2), ref_logps.chunk(2)
        ours = daa_loss("kto", policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc,
                        ref_rejected_logps=rr, chosen_lengths=torch.ones(n), rejected_lengths=torch.ones(n), beta=beta,
                        kl_reference_point=z, desirable_weight=weights[0], undesirable_weight=weights[1])[0].mean()
        assert (their_z > 0) == (shift > 0) and z.item() == pytest.approx(their_z, abs=1e-6)
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


# --- configs --------------------------------------------------------------------------------------

from tests.test_config import compose_cfg  # noqa: E402

from alignsweep.config.resolve import resolve_job  # noqa: E402
from alignsweep.errors import ConfigError  # noqa: E402


def test_kto_composes_with_its_weights():
    from alignsweep.train.losses import loss_params

    cfg = compose_cfg("algo=kto")
    job = resolve_job(cfg)
    assert job.algo == "kto" and job.beta == 0.1 and not job.reference_free
    params = loss_params(cfg, job)
    assert params["desirable_weight"] == 1.0 and params["undesirable_weight"] == 1.0


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["algo=dpo", "algo.desirable_weight=1.0"], "algo.desirable_weight: algo=dpo has no desirable_weight"),
        (["algo=cdpo", "algo.undesirable_weight=2"], "algo.undesirable_weight: algo=cdpo has no"),
        (["algo=kto", "algo.label_smoothing=0.1"], "algo.label_smoothing: algo=kto has no label_smoothing"),
        (["algo=kto", "alpha=0.5"], "alpha: algo=kto has no alpha"),
        (["algo=kto", "gamma=0.5"], "gamma: algo=kto has no gamma"),
        (["algo=kto", "algo.desirable_weight=0"], "algo.desirable_weight: must be > 0"),
        (["algo=kto", "algo.undesirable_weight=null"], "algo.undesirable_weight: kto reads it, so it needs a value, got null; its default is 1.0"),
        (["algo=kto", "model.per_device_batch=1"], "model.per_device_batch: kto estimates its reference point"),
        (["algo=kto", "data=tree_mdp", "model=tabular", "judge=gold"], "algo: kto's reference point needs"),
    ],
)
def test_knobs_kto_does_not_read_are_refused(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve_job(compose_cfg(*overrides))
    assert str(err.value).startswith(key), str(err.value)


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_kto_trains_evaluates_and_collects(cli):
    """KTO as a real sweep of two betas on the embedded task: both jobs train, evaluate and collect
    a row like DPO's; the second job reads the mismatched pairs' reference log-probs from the
    sweep's cache (both parts: the pairs' and the mismatched pairs')."""
    import json

    import pandas as pd

    cli("-m", "algo=kto", "beta=0.1,0.5", "logger=none", "train.epochs=0.1", "train.checkpoints=1",
        "eval.prompts=16", "hydra.launcher.max_parallel=1", "hydra.sweep.dir=sweep")
    table = pd.read_csv(cli.cwd / "sweep" / "results.csv")
    assert (table["algo"] == "kto").all() and (table["status"] == "completed").all()
    final = table[table["step"] > 0]
    assert sorted(final["beta"]) == [0.1, 0.5]
    for column in ("win_rate", "kl", "reward_accuracy", "train_loss"):
        assert final[column].map(math.isfinite).all(), column
    assert (final["kl_exact_token"] > 3 * final["kl_exact_token_se"]).all(), "training moved every policy"
    statuses = [json.loads(p.read_text()) for p in sorted((cli.cwd / "sweep").glob("*/status.json"))]
    # the first job computes what the cache lacks: all of it, or (when an earlier job of the same data
    # and SFT model, e.g. a DPO job, stored the pairs' parts) only the mismatched pairs'; the second
    # computes nothing
    first, second = sorted(s.get("ref_logps") for s in statuses)
    assert first == "computed" or (first.startswith("computed ") and first.endswith("read the others from the sweep's cache")), first
    assert second == "read from the sweep's cache"
