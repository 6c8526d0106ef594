"""The judge panel and its scores, reference metrics, the validation record.

Evaluation: the service LLM judges the student's responses (panel.py runs the panel, judging.py asks,
scores.py parses and aggregates, summary.py summarises), judge-free reference metrics and the task
score (reference.py), and each cycle's validation record (validation.py)."""
