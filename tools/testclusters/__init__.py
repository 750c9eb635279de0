"""Real clusters (Ray head, ...) that tests and the benchmark start and stop themselves."""
