"""Stage 3, the agent: policies, the episode engine, evaluation and collection."""
