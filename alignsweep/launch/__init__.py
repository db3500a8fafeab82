"""Launch: compose and validate every job of a sweep, lay out its run directories, start the jobs
(local processes or SLURM arrays through submitit) and print their progress. Imports no torch; it
starts the worker by module name.
"""
