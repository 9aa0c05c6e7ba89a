"""The alternatives the benchmark runs lossreg against, each served as its own process."""
