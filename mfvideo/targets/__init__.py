"""Targets stage: what pretraining predicts and hides: the HOG target (`hog`, docs/design.md §2) and the space-time
masks (`masks`, §3)."""
