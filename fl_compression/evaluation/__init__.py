"""Evaluation: word and character error rates of speech models."""
