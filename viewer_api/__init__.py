"""The viewer: a read-only index of status and checkpoint directories."""
