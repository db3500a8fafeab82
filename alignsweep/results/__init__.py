"""Results: the run directory (status, metrics, config), experiment tracking (wandb), the sweep's table
(collect), SLURM's view of the jobs, and `status`.
"""
