"""Reference solutions of the exercises (same signatures as the student files). Peek only after
trying."""
