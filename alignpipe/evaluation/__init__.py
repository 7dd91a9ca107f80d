"""Evaluation: scoring, answer checks, intervals and verdicts, the comparison table, the gate."""
