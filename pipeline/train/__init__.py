"""Training students and teachers from sets: run layout, Ray Train, the pruning runner."""
