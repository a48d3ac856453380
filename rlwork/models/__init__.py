"""Models: one small interface to every diffusion LM family, and the embedded tiny coders.

Owns `lm.py` (family presets, block-causal/bidirectional 4-D attention masks, logit alignment, `DiffusionLM`
whose `forward` every pass goes through, loading a checkpoint) and `tiny.py` (the tiny coders built in code).
May import: `rlwork.config`, `rlwork.data` (the tiny tokenizer is trained on the synthetic family's code).
"""
