"""Scoring a model over a whole split (score) through an `evaluate` metric module (token_loss)."""
