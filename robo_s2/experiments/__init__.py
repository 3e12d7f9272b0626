"""Experiments and their reports: rows x seeds trained and evaluated on the same demos and
positions (:mod:`robo_s2.experiments.runner`, its tables; plots in
:mod:`robo_s2.evaluation.plots`), and the S² Table-1 feature-reconstruction analysis
(:mod:`robo_s2.experiments.reconstruct`).
"""
