"""Classroom exercises on EfficientXpert (see ../EXERCISES.md). Student files: exN_*.py; reference
solutions: ../exercises_solutions/exN_*.py (outside this package); grading:
`python -m exercises.check N`."""
