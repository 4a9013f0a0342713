"""Stage 1, data: trajectories -> cleaned, selected, reformatted training sets (the ``datasets`` builder)."""
