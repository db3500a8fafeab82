"""Analysis of a collected sweep: scaling-law fits, figures, the collect/report commands' summaries,
and the embedded-scale findings.
"""
