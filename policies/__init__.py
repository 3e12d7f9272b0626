"""Policy networks: the chunked-action transformer and baselines."""
