"""The lowest layer: what every stage shares and nothing of the flow — atomic files and locks, logging,
preemption signals, the AVA file formats and how remote files are read."""
