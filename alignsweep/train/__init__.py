"""Training components: the DAA losses, the TRL trainer they run in, SFT, model loading, sharding
strategies, and the checkpoint callback that evaluates during training.
"""
