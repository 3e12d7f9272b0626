"""``robo-s2 quickstart``: collect, encode, train, evaluate and tabulate on small CPU defaults.

It is ``robo-s2 experiment`` with ``configs/experiment/quickstart.yaml``; see that file.
"""

from robo_s2.commands.experiment import run

__all__ = ["run"]
