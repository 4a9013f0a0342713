"""The shared core: the trajectory record and its I/O, tasks, tools, metrics, prompts, results."""
