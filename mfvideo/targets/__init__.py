"""targets stage of the mfvideo flow (see README)."""
