"""Backend A/B benchmarks: sweeps, peers (PyTorch SDPA ...), honest timing, results on record."""
