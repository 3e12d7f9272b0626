"""robo_s2: frozen multi-scale (S2) and pyramid (PIIP) vision encoders for robot BC."""

__version__ = "0.1.0"
