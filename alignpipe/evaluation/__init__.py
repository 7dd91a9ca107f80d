"""Evaluation: scoring, answer graders, intervals and verdicts, the comparison table, the gate."""
