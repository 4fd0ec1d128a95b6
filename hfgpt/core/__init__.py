"""Small helpers every stage uses: one-line errors, whole-or-absent files, Hub names."""
