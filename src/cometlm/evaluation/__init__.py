"""Evaluations of a CoMeT model on long-context tasks; each task writes JSON results and a figure to a folder."""
