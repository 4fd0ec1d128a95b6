"""The `evaluate` metric module that python -m hfgpt.eval loads from this folder (see token_loss.py)."""
