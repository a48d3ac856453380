"""The diffusion-model layer: masks proven on the tiny models, family resolution, save/load round trips."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from rlwork.config.inputs import BIDIRECTIONAL_FAMILIES
from rlwork.models.lm import (
    FAMILIES,
    DiffusionLM,
    align_logits,
    allowed_attention,
    get_family,
    load_diffusion_lm,
    position_ids_from_mask,
    resolve_family,
)
from rlwork.models.tiny import MODELING_FILE, build_tiny_model, build_tiny_tokenizer, ensure_tiny_coder


def _ids(n: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 1000, (n, t), generator=g)


@torch.no_grad()
def test_block_causal_sees_own_and_earlier_blocks_only(tiny_lm):
    ids = _ids(1, 16)
    base, _ = tiny_lm(ids)
    later = ids.clone()
    later[0, 8:12] = _ids(1, 4, seed=1)  # change block 2
    out, _ = tiny_lm(later)
    torch.testing.assert_close(out[0, :8], base[0, :8], rtol=0, atol=0)  # blocks 0-1 cannot see block 2
    own = ids.clone()
    own[0, 7] = (ids[0, 7] + 1) % 1000 + 10  # last token of block 1
    out, _ = tiny_lm(own)
    assert not torch.allclose(out[0, 4], base[0, 4])  # first token of block 1 sees it: bidirectional in-block
    torch.testing.assert_close(out[0, :4], base[0, :4], rtol=0, atol=0)


@torch.no_grad()
def test_plain_model_call_is_causal_not_block_causal(tiny_lm):
    """The reason the layer exists: `model(ids)` hides a block's later tokens from its earlier ones."""
    ids = _ids(1, 8)
    changed = ids.clone()
    changed[0, 3] = (ids[0, 3] + 1) % 1000 + 10
    plain_a = tiny_lm.model(ids).logits
    plain_b = tiny_lm.model(changed).logits
    torch.testing.assert_close(plain_a[0, 0], plain_b[0, 0])  # causal: position 0 blind to position 3
    ours_a, _ = tiny_lm(ids)
    ours_b, _ = tiny_lm(changed)
    assert not torch.allclose(ours_a[0, 0], ours_b[0, 0])  # block-causal: same block, so it sees it


@torch.no_grad()
def test_bidirectional_every_position_sees_every_other(tiny_bidir_lm):
    ids = _ids(1, 10)
    base, _ = tiny_bidir_lm(ids)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 1000 + 10
    out, _ = tiny_bidir_lm(changed)
    differs = (out - base).abs().amax(-1)[0] > 1e-6
    assert differs.all(), differs


@pytest.mark.parametrize("fixture", ["tiny_lm", "tiny_bidir_lm"])
@torch.no_grad()
def test_left_padding_is_ignored(fixture, request):
    lm = request.getfixturevalue(fixture)
    ids = _ids(1, 11)
    alone, _ = lm(ids)
    padded = torch.cat([torch.full((1, 5), lm.pad_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 11, dtype=torch.bool)], dim=1)
    out, _ = lm(padded, mask)
    torch.testing.assert_close(out[:, 5:], alone, rtol=1e-5, atol=1e-5)
    batch = torch.cat([padded, _ids(1, 16, seed=3)])  # ragged batch: row 0 padded, row 1 full
    mask2 = torch.cat([mask, torch.ones(1, 16, dtype=torch.bool)])
    out2, _ = lm(batch, mask2)
    torch.testing.assert_close(out2[:1, 5:], alone, rtol=1e-5, atol=1e-5)


def test_allowed_attention_known_pattern():
    key_mask = torch.tensor([[False, False, True, True, True, True, True, True]])
    allowed = allowed_attention(key_mask, 8, "block_causal", 4)[0, 0]
    # real tokens have positions 0..5: block 0 = keys 2..5, block 1 = keys 6..7
    assert allowed[2].tolist() == [False, False, True, True, True, True, False, False]
    assert allowed[7].tolist() == [False, False, True, True, True, True, True, True]
    assert allowed[0].tolist() == [True] + [False] * 7  # a pad query sees only itself
    bidir = allowed_attention(key_mask, 3, "bidirectional", None)[0, 0]
    assert bidir.shape == (3, 8) and bidir.all(-1).logical_not().all()
    assert bidir[:, 2:].all() and not bidir[:, :2].any()


def test_position_ids_count_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@torch.no_grad()
def test_shifted_logits_line_up_with_targets(tiny_bidir_lm):
    """Dream/DiffuCoder: raw logits at i-1 predict token i; aligned logits at i must be those."""
    shifted = DiffusionLM(
        tiny_bidir_lm.model, tiny_bidir_lm.tokenizer, dataclasses.replace(tiny_bidir_lm.family, shift_logits=True)
    )
    ids = _ids(2, 9)
    raw, _ = tiny_bidir_lm(ids)
    aligned, _ = shifted(ids)
    torch.testing.assert_close(aligned[:, 1:], raw[:, :-1], rtol=0, atol=0)
    assert align_logits(raw, shift=False) is raw


@pytest.mark.parametrize("shift", [False, True])
def test_logits_to_keep_equals_the_tail_of_the_full_logits(tiny_bidir_lm, tiny_lm, shift):
    """The ELBO asks for the trailing completion's logits only; they must equal the full forward's tail."""
    for lm in (tiny_lm, tiny_bidir_lm):
        lm = DiffusionLM(lm.model, lm.tokenizer, dataclasses.replace(lm.family, shift_logits=shift))
        ids = _ids(2, 11)
        full, _ = lm(ids)
        for k in (1, 5, 11, 20):
            tail, _ = lm(ids, logits_to_keep=k)
            torch.testing.assert_close(tail, full[:, -min(k, 11):], rtol=1e-5, atol=1e-5)


def test_kv_cache_matches_full_forward(tiny_lm):
    """Block-causal: committed blocks in the cache give the same logits as recomputing everything.

    The cache must end on a block boundary of every row (row 1's 4 pads keep it aligned); a cut inside a block
    would hide that block's later tokens from its cached ones, which is why the sampler aligns blocks.
    """
    ids = _ids(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :4] = False
    with torch.no_grad():
        full, _ = tiny_lm(ids, mask)
        _, cache = tiny_lm(ids[:, :8], mask[:, :8], use_cache=True)
        tail, _ = tiny_lm(ids[:, 8:], mask, cache=cache)
    torch.testing.assert_close(tail, full[:, 8:], rtol=1e-5, atol=1e-5)


class _Cfg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Tok:
    unk_token_id = 3

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def convert_tokens_to_ids(self, token):
        return self.unk_token_id


def test_config_knows_which_families_are_bidirectional():
    """The config layer checks algo.likelihood=trace against family names it cannot import from rlwork.models."""
    assert set(BIDIRECTIONAL_FAMILIES) == {n for n, f in FAMILIES.items() if f.attention == "bidirectional"}


def test_resolve_family_reads_checks_and_refuses_guesses():
    sdc = get_family("stable-diffcoder")
    ok = resolve_family(sdc, _Cfg(eos_token_id=2, pad_token_id=1), _Tok(mask_token_id=5))
    assert (ok.mask_token_id, ok.eos_token_id, ok.pad_token_id, ok.block_size) == (5, 2, 1, 4)
    with pytest.raises(ValueError, match="mask_token_id disagrees"):
        resolve_family(sdc, _Cfg(), _Tok(mask_token_id=6))
    with pytest.raises(ValueError, match="eos_token_id disagrees"):
        resolve_family(sdc, _Cfg(eos_token_id=[7, 8]), _Tok())
    generic = get_family("masked-diffusion")
    with pytest.raises(ValueError, match="mask_token_id is declared neither"):
        resolve_family(generic, _Cfg(eos_token_id=2), _Tok())
    with pytest.raises(ValueError, match="applies to block-causal"):
        resolve_family(generic, _Cfg(mask_token_id=4, eos_token_id=2), _Tok(), block_size=8)
    with pytest.raises(ValueError, match="trained with block size 4"):
        resolve_family(sdc, _Cfg(block_size=4), _Tok(), block_size=8)
    with pytest.raises(ValueError, match="unknown model family 'gpt'.*stable-diffcoder"):
        get_family("gpt")


@pytest.mark.parametrize("variant,family", [("tiny", "stable-diffcoder"), ("tiny-bidirectional", "masked-diffusion")])
def test_tiny_coder_round_trips_with_identical_logits(variant, family, tmp_path):
    lm = load_diffusion_lm(variant, family)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    if variant == "tiny":
        (tmp_path / "modeling_stable_diffcoder.py").write_text(MODELING_FILE)
    again = load_diffusion_lm(str(tmp_path), family, trust_remote_code=True)
    assert type(again.model).__name__ == type(lm.model).__name__
    assert again.family == lm.family
    ids = _ids(2, 13)
    with torch.no_grad():
        torch.testing.assert_close(again(ids)[0], lm(ids)[0], rtol=0, atol=0)
    assert sum(p.numel() for p in lm.model.parameters()) > 1_000_000  # "a few million parameters"


def test_tiny_checkpoint_loads_as_remote_code_class():
    path = ensure_tiny_coder("tiny")
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    assert type(model).__name__ == "StableDiffcoderForCausalLM"
    assert any(c.__name__ == "LlamaForCausalLM" for c in type(model).__mro__)


def test_config_mirroring_real_stable_diffcoder_loads_through_preset(tmp_path):
    """A shrunken copy of Stable-DiffCoder-8B's config.json (model_type llama, its ids) and tokenizer ids."""
    real_fields = dict(  # the real file's values, shapes shrunk
        architectures=["StableDiffcoderForCausalLM"], model_type="llama", bos_token_id=0, pad_token_id=1,
        eos_token_id=2, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
        auto_map={"AutoModelForCausalLM": "modeling_stable_diffcoder.StableDiffcoderForCausalLM"},
    )
    small = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config = LlamaConfig(**small, **{k: v for k, v in real_fields.items() if k not in ("architectures", "auto_map")})
    build_tiny_model(config).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(real_fields)  # no mask_token_id, no block_size: like the real file, the preset supplies them
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "modeling_stable_diffcoder.py").write_text(MODELING_FILE)
    build_tiny_tokenizer().save_pretrained(tmp_path)
    lm = load_diffusion_lm(str(tmp_path), "stable-diffcoder", trust_remote_code=True)
    assert type(lm.model).__name__ == "StableDiffcoderForCausalLM"
    assert (lm.mask_id, lm.eos_id, lm.pad_id, lm.block_size, lm.block_causal) == (5, 2, 1, 4, True)
    assert not lm.family.shift_logits
    with pytest.raises(ValueError, match="does not match the 'llada' family"):
        load_diffusion_lm(str(tmp_path), "llada", trust_remote_code=True)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="could not load model.path"):
        load_diffusion_lm(str(tmp_path / "nope"), "stable-diffcoder")


def test_tokenizer_is_deterministic_with_fixed_special_ids():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert (a.bos_token_id, a.pad_token_id, a.eos_token_id, a.mask_token_id) == (0, 1, 2, 5)
    text = "def f(x):\n    return [y * 2 for y in x if y % 2 == 0]\n"
    assert a.decode(a(text)["input_ids"]) == text
    prompt = a.apply_chat_template([{"role": "user", "content": "Write f."}], add_generation_prompt=True,
                                   tokenize=False)
    assert prompt.endswith("<|assistant|>\n") and "Write f." in prompt
