"""Evaluation stage: evaluators of a pass (classification views, the AVA evaluation), the k-NN and linear probes,
and the pictures and reports drawn from results. An evaluator reads batches and model outputs, never a recipe."""
