"""Evaluation internals: env pools (in-process and worker processes) and the actors that drive
them (a checkpoint's encoder + policy, or the scripted expert), success statistics and the plots
of positions and success rates that evaluations and experiments draw (:mod:`plots`). The public
entry point is :func:`robo_s2.evaluation.runner.evaluate`.

Modules here import nothing heavy at import time: the env workers are spawned processes that import
only numpy, gymnasium and mujoco, never torch.
"""
