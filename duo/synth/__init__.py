"""Synthetic data: the teacher's requests, streaming synthesis, curation, mix.

Synthetic data: what the teacher is asked (teacher.py), streaming synthesis (generate.py), and
curation against one incremental index (curate.py, filters.py)."""
