"""Examples: job specs, and the demo that ``make demo`` runs."""
