"""Models: one small interface to every diffusion LM family, and the embedded tiny coders.

Owns `families.py` (family presets: diffusion facts, each family's forward convention and LoRA target names, read
from its published modelling code), `lm.py` (block-causal/bidirectional 4-D attention masks, logit alignment,
`DiffusionLM` whose `forward` every pass goes through, loading a checkpoint), `diffusion_kernel.py` (the torch-only
mask maths, convention-driven model call and block-diffusion sampler, which exports run verbatim),
`hf_generation.py` + `export_code.py` (the exported folder's `generate`) and `tiny.py` (the tiny coders built in
code). `diffusion_kernel.py` and `hf_generation.py` import nothing from rlwork (they are copied into exports).
May import: `rlwork.config`, `rlwork.data` (the tiny tokenizer is trained on the synthetic family's code).
"""
