"""Sharing runs: the model card (card), pushing to the Hub (push), reading a pushed checkpoint
back (download); the token is never shown (token)."""
