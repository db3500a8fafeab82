"""Process plumbing every room may use: torch.distributed helpers, the phase clock, the fast process
exit.
"""
