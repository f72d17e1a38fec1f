"""Features: every plot and poster encoded once per encoder and kept in a checksummed on-disk cache, keyed by what
identifies the encoder's output (its fingerprint and precision), so models, runs and subsets reuse them."""
