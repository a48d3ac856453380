"""Data: dataset rows -> problems in one schema -> prompt texts, and the demo's synthetic task family.

Owns `schema.py` (the problem schema and its validation), `adapters.py` (per-format adapters: HumanEval, MBPP,
APPS, ...), `loading.py` (datasets/local files -> validated problems, column mappings, prompt rendering),
`prompts.py` (splits and the seeded, resumable prompt stream) and `tasks.py` (the synthetic family).
May import: `rlwork.config` and libraries (datasets). Knows nothing of models, torch training or rewards.
"""
