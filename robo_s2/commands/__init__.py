"""One module per ``robo-s2`` command; each exposes ``run(cfg)``."""
