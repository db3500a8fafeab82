"""Benchmarks: what a sweep costs beyond training (`python -m alignsweep bench`) and DPO throughput and
MFU on a GPU (`python -m alignsweep bench-gpu`).
"""
