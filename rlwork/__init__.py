"""rlwork: RL for diffusion code models (base diffusion coder -> Instruct).

Packages by layer; imports only go down this list (tests/test_layers.py checks it):

    cli, demo                      commands (demo: the embedded tiny default end to end)
    rl, sft                        the two training loops; neither imports the other
    evaluation                     pass@k in the sandbox (also phase 6 of RL)
    runtime                        engine, dist, checkpoints, tracking, starting policies, the shared session
    diffusion                      masking, ELBOs, the sampler, rollouts
    models                         diffusion-LM families and loading, the tiny coders
    data                           datasets -> problems -> prompts, the synthetic task family
    config                         typed dataclass configs (the only source of defaults)

`rewards/` is a sibling package: torch-free, it never imports rlwork.
"""
