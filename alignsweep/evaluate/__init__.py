"""Evaluation of a policy checkpoint against the reference: sampling, KL estimates, judged win rate,
held-out log-likelihoods; batch sizing; the vLLM sampler; the judges.
"""
