"""elbo/estimator_std: the spread of one completion's ELBO estimate across mask draws (not across completions)."""

import math
import statistics

import torch

from rlwork.config import AlgoConfig
from rlwork.diffusion.elbo import elbo
from rlwork.diffusion.rollout import Rollout
from rlwork.rl.elbo_spread import estimator_std
from rlwork.rl.likelihoods import draw_masks_for
from rlwork.runtime.rng import row_generator


def _rollout(lm, n=3, p=5, length=8):
    gen = torch.Generator().manual_seed(2)
    completion_mask = torch.arange(length)[None] < torch.tensor([8, 5, 3])[:n, None]
    completion_ids = torch.randint(10, 1000, (n, length), generator=gen).masked_fill(~completion_mask, lm.pad_id)
    return Rollout(prompt_ids=torch.randint(10, 1000, (n, p), generator=gen), prompt_mask=torch.ones(n, p).bool(),
                   completion_ids=completion_ids, completion_mask=completion_mask,
                   group_ids=torch.zeros(n, dtype=torch.long), decode_step=torch.zeros(n, length, dtype=torch.long),
                   sampling_per_token_logps=torch.zeros(n, length), trace_ids=completion_ids,
                   trace_step=torch.zeros(n, length, dtype=torch.long),
                   prompts=[""] * n, completions=[""] * n, problems=[{}] * n, num_forwards=0)


def test_matches_the_std_of_separate_estimates_by_hand(tiny_lm):
    rollout, algo = _rollout(tiny_lm), AlgoConfig(elbo_estimator="mc")
    got = estimator_std(algo, tiny_lm, tiny_lm.model, rollout, rows=2, seed=5, step=3, first_row=10, draws=3)
    part = rollout.select(torch.arange(2))
    with torch.no_grad():
        per_draw = torch.stack([
            elbo(tiny_lm, part.prompt_ids, part.prompt_mask, part.completion_ids, part.completion_mask,
                 draw_masks_for(algo, tiny_lm, part, row_generator(5, 3, f"spread{r}", 10, tiny_lm.device)),
                 model=tiny_lm.model).sequence / part.completion_mask.sum(1)
            for r in range(3)])  # [R, M]
    expected = statistics.mean(statistics.stdev(per_draw[:, i].tolist()) for i in range(2))
    assert got > 0 and math.isclose(got, expected, rel_tol=1e-5)


def test_a_deterministic_estimator_has_no_spread(tiny_bidir_lm):
    # d1's one-step estimator without prompt masking: the completion fully masked, the same forward every draw
    algo = AlgoConfig(elbo_estimator="one_step", prompt_mask_prob=0.0)
    assert estimator_std(algo, tiny_bidir_lm, tiny_bidir_lm.model, _rollout(tiny_bidir_lm), rows=3, seed=0,
                         step=0, first_row=0) == 0.0
    assert math.isnan(estimator_std(AlgoConfig(), tiny_bidir_lm, tiny_bidir_lm.model, _rollout(tiny_bidir_lm),
                                    rows=3, seed=0, step=0, first_row=0, draws=1))


def test_more_samples_per_estimate_shrink_its_spread(tiny_lm):
    rollout = _rollout(tiny_lm)
    one, eight = (estimator_std(AlgoConfig(elbo_estimator="mc", elbo_samples=s), tiny_lm, tiny_lm.model, rollout,
                                rows=3, seed=1, step=0, first_row=0, draws=8) for s in (1, 8))
    assert eight < one  # an average of 8 draws: about 1/sqrt(8) of the spread
