"""Configuration: the typed schema Hydra composes against, the resolution and checks of one job (before
anything is queued), the run's config file, and Hydra callbacks. Imports no torch.
"""
