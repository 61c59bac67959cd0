"""Reporting: the typed schema of a run's ``results.json`` (written by the engine, read here) and the
paper-style tables (mean ± std over seeds) built from many runs."""
