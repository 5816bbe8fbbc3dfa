"""Scores of finished runs: CLIP metrics, evaluation, the report, and the toy world's scores against its truth."""
