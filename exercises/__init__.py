"""Classroom exercises on EfficientXpert (see ../EXERCISES.md). Student files: exN_*.py; reference
solutions: solutions/exN_*.py; grading: `python -m exercises.check N`."""
