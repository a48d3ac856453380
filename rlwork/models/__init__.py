"""Models: one small interface to every diffusion LM family, and the embedded tiny coders.

Owns `families.py` (family presets: diffusion facts, each family's forward convention and LoRA target names, read
from its published modelling code), `lm.py` (block-causal/bidirectional 4-D attention masks, logit alignment,
`DiffusionLM` whose `forward` every pass goes through, loading a checkpoint) and `tiny.py` (the tiny coders built
in code).
May import: `rlwork.config`, `rlwork.data` (the tiny tokenizer is trained on the synthetic family's code).
"""
