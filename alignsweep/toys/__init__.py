"""Toy tasks that run through the same worker, configs and collector: the Tree MDP of Rafailov et al.
(registered in `alignsweep.worker.kinds`).
"""
