"""Stage 4, reporting: plots, Hub cards, row inspection."""
