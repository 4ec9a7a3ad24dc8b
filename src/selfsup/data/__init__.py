"""Image sources, splits and preprocessing."""
