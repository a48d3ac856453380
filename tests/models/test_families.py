"""Every family with its own calling convention: a tiny model in each family's published layout and `forward`
signature (tests/models/families/), adapters on every layer's named projections and never the head, and the whole
loop on each: SFT step, RL step (from the SFT run), export, reload."""

import sys

import pytest
import torch
from safetensors.torch import load_file

from rlwork.cli import main
from rlwork.config import ConfigError, ModelConfig
from rlwork.models import families
from rlwork.models.lm import load_diffusion_lm, lora_target_paths
from rlwork.runtime.policies import load_policy
from tests.models.family_checkpoints import build_family_checkpoint, tiny_presets

FAMILIES = ["stable-diffcoder", "sdar", "llada", "dream", "diffucoder"]
CLASSES = {"stable-diffcoder": "StableDiffcoderForCausalLM", "sdar": "SDARForCausalLM", "llada": "LLaDAModelLM",
           "dream": "DreamModel", "diffucoder": "DreamModel"}
REWARD = ("def varied(prompts, completions, **columns):\n"
          "    return [sum(c.isalpha() for c in t) / max(len(t), 1) for t in completions]\n")


@pytest.fixture()
def presets(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", tiny_presets())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: build_family_checkpoint(family, root / family) for family in FAMILIES}


def _lm(checkpoints, family):
    return load_diffusion_lm(str(checkpoints[family]), family, trust_remote_code=True)


def _batch(lm, n=3, t=13):
    ids = torch.randint(10, 1000, (n, t), generator=torch.Generator().manual_seed(0))
    key_mask = torch.ones(n, t, dtype=torch.bool)
    key_mask[0, :4] = False  # left padding
    return ids.masked_fill(~key_mask, lm.pad_id), key_mask


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_with_its_class_and_pads_left_correctly(presets, checkpoints, family):
    lm = _lm(checkpoints, family)
    assert type(lm.model).__name__ == CLASSES[family] and lm.family.name == family
    ids, key_mask = _batch(lm)
    with torch.no_grad():
        padded, _ = lm.forward(ids, key_mask)
        alone, _ = lm.forward(ids[:1, 4:])  # the padded row without its padding
        tail, _ = lm.forward(ids, key_mask, logits_to_keep=5)
    first = int(lm.family.shift_logits)  # a shifted family's first real position has no prediction of its own
    torch.testing.assert_close(padded[0, 4 + first:], alone[0, first:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tail, padded[:, -5:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_go_on_every_layers_projections_and_never_the_head(presets, checkpoints, family):
    lm = _lm(checkpoints, family)
    paths = lora_target_paths(lm.model, lm.family.lora_targets, lm.family)
    layers = lm.model.config.num_hidden_layers if family != "llada" else lm.model.config.n_layers
    assert len(paths) == layers * 7 and len(set(paths)) == len(paths)
    head = next(name for name, m in lm.model.named_modules() if m is lm.model.get_output_embeddings())
    assert head not in paths
    if family == "llada":  # Llama names on LLaDA: four of seven projections, and `ff_out` also names the head
        assert head == "model.transformer.ff_out" and "model.transformer.blocks.0.ff_out" in paths
        with pytest.raises(ConfigError, match=r"lora.target_modules=.*'o_proj' is in none of its 2 layers.*"
                                              r"'attn_out'"):
            lora_target_paths(lm.model, families.LLAMA_TARGETS, lm.family)


def test_families_without_a_usable_cache_refuse_sampler_use_cache(presets, checkpoints):
    from rlwork.config import SamplerConfig
    from rlwork.diffusion.sampler import generate

    for family in ("llada", "dream", "diffucoder"):
        lm = _lm(checkpoints, family)
        ids, key_mask = _batch(lm)
        with pytest.raises(ValueError, match="sampler.use_cache=false"):
            generate(lm, ids, key_mask, SamplerConfig(max_new_tokens=4, use_cache=True), generator=torch.Generator())


def test_sdar_cached_sampling_equals_uncached(presets, checkpoints):
    from rlwork.config import SamplerConfig
    from rlwork.diffusion.sampler import generate

    lm = _lm(checkpoints, "sdar")
    ids, key_mask = _batch(lm)
    outs = [generate(lm, ids, key_mask, SamplerConfig(max_new_tokens=8, temperature=0.0, use_cache=cached))
            for cached in (True, False)]
    assert torch.equal(outs[0].completion_ids, outs[1].completion_ids)  # past_key_values + store_kv=True


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_step_rl_step_export_and_reload(presets, checkpoints, family, tmp_path, monkeypatch, capsys):
    (tmp_path / "family_rewards.py").write_text(REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("family_rewards", None)
    cache = [] if lm_has_cache(family) else ["sampler.use_cache=false"]
    common = [f"model.family={family}", "model.trust_remote_code=true", "data.synthetic_train=4",
              "data.synthetic_heldout=2", "tracking.wandb=false", "lora.r=4", "sampler.max_new_tokens=8", *cache]
    sft, rl = tmp_path / "sft", tmp_path / "rl"
    assert main(["sft", f"output_dir={sft}", f"model.path={checkpoints[family]}", "sft.steps=1", "sft.batch_size=2",
                 "sft.lora=true", "sft.learning_rate=0.05", *common]) == 0
    assert main(["train", f"output_dir={rl}", f"model.path={sft}", "train.steps=1", "train.prompts_per_step=2",
                 "algo.num_generations=2", "train.micro_batch_size=4", "train.learning_rate=0.05",
                 "algo.dynamic_sampling=keep", "rewards.functions=[family_rewards:varied]", "rewards.weights=[1.0]",
                 *common]) == 0
    layers = 4 if family == "stable-diffcoder" else 2
    for run in (sft, rl):  # each step trained its adapter (LoRA B starts at 0), on 7 projections of every layer
        adapter = load_file(run / "checkpoints" / "step_000001" / "adapter" / "adapter_model.safetensors")
        assert sum("lora_A" in n for n in adapter) == layers * 7, sorted(adapter)
        assert any(float(t.abs().max()) > 0 for n, t in adapter.items() if "lora_B" in n), run
    merged = tmp_path / "merged"
    assert main(["export", str(rl), "--out", str(merged)]) == 0  # every stage's weights in one HF folder
    capsys.readouterr()
    exported = load_diffusion_lm(str(merged), family, trust_remote_code=True)
    assert CLASSES[family] in [c.__name__ for c in type(exported.model).__mro__]  # wrapped for its generate
    policy = load_policy(ModelConfig(path=str(sft), family=family, trust_remote_code=True), str(rl))
    ids, key_mask = _batch(exported)
    with torch.no_grad():
        torch.testing.assert_close(exported.forward(ids, key_mask)[0], policy.forward(ids, key_mask)[0],
                                   rtol=1e-4, atol=1e-5)


def lm_has_cache(family: str) -> bool:
    return families.FAMILIES[family].forward.cache_arg is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_the_exported_generate_gives_the_samplers_tokens(presets, checkpoints, family, tmp_path):
    """The folder's own `generate` (AutoModelForCausalLM, remote code) calls the model with the family's forward
    convention from config.json and gives rlwork's sampler's tokens at temperature 0, with the family's cache and
    without; adding the generate to a folder that has one already (an export of an export) keeps the model class."""
    import json
    import shutil

    from transformers import AutoModelForCausalLM

    from rlwork.config import SamplerConfig
    from rlwork.diffusion.sampler import generate
    from rlwork.models.export_code import add_diffusion_generate

    # A folder name of its own: transformers names remote code modules after the folder, and once a config class
    # has a model class registered in this process, it loads that one, whatever auto_map says.
    folder = tmp_path / f"{family}-export"
    shutil.copytree(checkpoints[family], folder)
    lm = _lm(checkpoints, family)
    block = None if lm.block_causal else 4
    settings = {"max_new_tokens": 8, "steps_per_block": 2, "block_size": block, "use_cache": False}
    for _ in range(2):
        add_diffusion_generate(folder, lm.family, settings, {"chat": False})
    recorded = json.loads((folder / "config.json").read_text())["rlwork"]
    assert recorded["forward"] == json.loads(json.dumps(families.convention_dict(lm.family.forward)))
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert CLASSES[family] in [c.__name__ for c in type(model).__mro__[1:]]
    ids, key_mask = _batch(lm)
    for use_cache in (True, False) if lm_has_cache(family) else (False,):
        config = SamplerConfig(temperature=0.0, max_new_tokens=8, steps_per_block=2, block_size=block,
                               use_cache=use_cache)
        expected = generate(lm, ids, key_mask, config).completion_ids
        out = model.generate(ids, attention_mask=key_mask, use_cache=use_cache)
        assert torch.equal(out[:, ids.shape[1]:], expected), (family, use_cache)
        assert len(set(map(tuple, expected.tolist()))) > 1  # rows differ: not a degenerate output


def test_the_kernels_default_convention_is_the_presets():
    """Exports that record no convention are called as transformers' own models are (ForwardConvention())."""
    from rlwork.models.diffusion_kernel import HF_CONVENTION

    assert families.convention_dict(families.ForwardConvention()) == HF_CONVENTION
