"""Fixtures of the GPU worker tests: a tiny random BERT and a finished run to infer with."""
