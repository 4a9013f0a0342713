"""The offline demo: a synthetic task run through every stage."""
