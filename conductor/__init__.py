"""The conductor: the only writer of jobs, their state and their status files."""
