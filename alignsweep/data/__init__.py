"""Data: the embedded synthetic task, preference pairs read from files or the hub and cleaned, and the
prepared splits jobs of a sweep share.
"""
