"""What the conductor and the viewer share: names, the job spec, the on-disk
layout, the status.json format, domain errors and their status codes."""
