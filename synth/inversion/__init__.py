"""The synthesis objective and its optimisation: the loss terms (terms), their registry and weighting (objective),
the Adaptive DeepInversion competitor (competitor), one iteration (step) and one batch of multi-resolution
DeepInversion (invert)."""
