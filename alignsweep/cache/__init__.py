"""The sweep cache under `paths.cache_dir`: results jobs share (SFT model, prepared data, reference
log-probs, step 0), computed once under a lock, and the `cache` command that lists and prunes it.
"""
