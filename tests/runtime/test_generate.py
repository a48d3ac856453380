"""The exported Instruct folder generates by block diffusion: the same tokens as rlwork's sampler at temperature 0,
through `AutoModelForCausalLM(...).generate`, `rlwork generate`, and without rlwork installed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlwork.cli import main
from rlwork.config import ModelConfig, SamplerConfig
from rlwork.diffusion.rollout import tokenize_prompts
from rlwork.diffusion.sampler import generate
from rlwork.models.export_code import add_diffusion_generate
from rlwork.models.hf_generation import diffusion_generate
from rlwork.models.tiny import ensure_tiny_coder
from rlwork.runtime.policies import load_model

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["def add(a, b):\n", 'def square(x):\n    """Return x squared."""\n', "x = [1, 2, 3]\nprint("]
L, STEPS = 16, 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-step RL run on the tiny coder (a large learning rate, so the adapter matters) and its export."""
    tmp = tmp_path_factory.mktemp("gen")
    assert main(["train", f"output_dir={tmp / 'run'}", "train.steps=1", "train.prompts_per_step=2",
                 "algo.num_generations=2", "sampler.max_new_tokens=4", "data.synthetic_train=4",
                 "data.synthetic_heldout=2", "tracking.wandb=false", "train.micro_batch_size=4", "data.chat=false",
                 "rewards.functions=[format]", "rewards.weights=[1]", "train.learning_rate=0.05",
                 "eval.every_steps=0"]) == 0
    assert main(["export", str(tmp / "run"), "--out", str(tmp / "export")]) == 0
    return tmp / "run", tmp / "export"


def sampler_tokens(folder, family="stable-diffcoder", use_cache=True, texts=PROMPTS, length=L, steps=STEPS):
    lm = load_model(ModelConfig(path=str(folder), family=family, trust_remote_code=True))
    ids, mask = tokenize_prompts(lm.tokenizer, texts, lm.pad_id, lm.device)
    out = generate(lm, ids, mask, SamplerConfig(temperature=0.0, max_new_tokens=length, steps_per_block=steps,
                                                use_cache=use_cache))
    return ids, mask, out.completion_ids, lm.tokenizer


def test_exported_generate_gives_the_samplers_tokens(trained):
    _, export = trained
    ids, mask, expected, _ = sampler_tokens(export)
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=L, steps_per_block=STEPS)  # greedy, as in HF
    assert torch.equal(out[:, :ids.shape[1]], ids)
    assert torch.equal(out[:, ids.shape[1]:], expected)
    assert len(set(map(tuple, expected.tolist()))) == len(PROMPTS)  # not a degenerate output
    config = json.loads((export / "config.json").read_text())
    assert config["rlwork"]["mask_token_id"] == 5 and config["rlwork"]["sampler"]["max_new_tokens"] == 4


def test_the_stream_is_the_prompt_then_the_blocks(trained):
    _, export = trained
    ids, mask, expected, tok = sampler_tokens(export, texts=PROMPTS[:1])

    class Recorder:
        def __init__(self):
            self.pieces, self.ended = [], False

        def put(self, value):
            self.pieces.append(value.tolist())

        def end(self):
            self.ended = True

    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
    rec = Recorder()
    model.generate(ids, attention_mask=mask, max_new_tokens=L, steps_per_block=STEPS, temperature=0.0, streamer=rec)
    assert rec.ended and rec.pieces[0] == ids[0].tolist()
    streamed = [t for piece in rec.pieces[1:] for t in piece]
    real = expected[0][expected[0] != tok.pad_token_id].tolist()
    assert streamed == real and len(rec.pieces) >= 1 + L // 4  # one piece per committed block of 4


def test_rlwork_generate_on_the_export_and_on_the_run(trained, capsys):
    run, export = trained
    _, _, expected, tok = sampler_tokens(export)
    texts = [tok.decode(row, skip_special_tokens=True) for row in expected]
    args = [arg for p in PROMPTS for arg in ("--prompt", p)]
    for source in (export, run):
        assert main(["generate", str(source), *args, "--max-new-tokens", str(L), "--steps-per-block",
                     str(STEPS)]) == 0
        out = capsys.readouterr().out
        assert json.loads(out.splitlines()[-1]) == {"completions": texts}
        assert texts[0] in out.split("{")[0]  # streamed before the JSON line


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_library_model_class_gets_the_generate_too(tmp_path, use_cache):
    """The bidirectional tiny coder is a plain LlamaForCausalLM (no remote code): the wrapper subclasses it."""
    from rlwork.models.lm import get_family, resolve_family

    folder = tmp_path / "bidir"
    shutil.copytree(ensure_tiny_coder("tiny-bidirectional"), folder)
    lm = load_model(ModelConfig(path=str(folder), family="masked-diffusion"))
    add_diffusion_generate(folder, resolve_family(get_family("masked-diffusion"), lm.model.config, lm.tokenizer),
                           {"max_new_tokens": L, "steps_per_block": STEPS, "use_cache": use_cache}, {"chat": False})
    ids, mask, expected, _ = sampler_tokens(folder, "masked-diffusion", use_cache=use_cache)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__mro__[2].__name__ == "LlamaForCausalLM"
    assert torch.equal(model.generate(ids, attention_mask=mask, temperature=0.0)[:, ids.shape[1]:], expected)
    old = {k: v for k, v in model.config.rlwork.items() if k != "forward"}  # an export from before it was recorded
    settings = {**old["sampler"], "temperature": 0.0}
    assert torch.equal(diffusion_generate(model, old, ids, mask, settings), expected)


NO_RLWORK = '''
import importlib.abc, sys
class NoRlwork(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rlwork" or name.startswith("rlwork."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: rlwork is not installed here)")
sys.meta_path.insert(0, NoRlwork())
'''

BLOCK_RLWORK = NO_RLWORK + '''
import json, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
ids, mask = torch.tensor(json.loads(sys.argv[2])), torch.tensor(json.loads(sys.argv[3]))
out = model.generate(ids, attention_mask=mask, max_new_tokens=LENGTH, steps_per_block=STEPS, temperature=0.0)
assert "rlwork" not in {m.split(".")[0] for m in sys.modules}
print(json.dumps(out[:, ids.shape[1]:].tolist()))
'''.replace("LENGTH", str(L)).replace("STEPS", str(STEPS))


def test_the_export_generates_offline_without_rlwork(trained, tmp_path):
    _, export = trained
    ids, mask, expected, _ = sampler_tokens(export)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # a fresh module cache
    out = subprocess.run([sys.executable, "-c", BLOCK_RLWORK, str(export), json.dumps(ids.tolist()),
                          json.dumps(mask.tolist())], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == expected.tolist()


KERNEL_ALONE = NO_RLWORK + '''
sys.path.insert(0, sys.argv[1])
import json, torch
import diffusion_kernel
logits = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
run = diffusion_kernel.sample(lambda ids, key_mask, cache: logits[ids.cumsum(1) % 1000], json.loads(sys.argv[2]),
                              torch.tensor([[5, 6, 7]]), None, json.loads(sys.argv[3]))
assert "rlwork" not in {m.split(".")[0] for m in sys.modules}
print(json.dumps(run.ids.tolist()))
'''
KERNEL_FACTS = {"mask_token_id": 3, "eos_token_id": 2, "pad_token_id": 1, "attention": "block_causal", "block_size": 4,
                "shift_logits": False}
KERNEL_SETTINGS = {"max_new_tokens": 8, "steps_per_block": 2, "block_size": None, "temperature": 0.0, "top_k": None,
                   "top_p": None, "remasking": "low_confidence", "threshold": None, "use_cache": False}


def test_the_kernel_runs_without_rlwork(trained, tmp_path):
    """The export's sampler imports only torch (and transformers for its cache), never rlwork: imported from the
    exported folder alone, with rlwork blocked, it samples what rlwork's own copy samples (a fake model whose logits
    depend on the context)."""
    import ast

    from rlwork.models import diffusion_kernel, hf_generation

    for module in (diffusion_kernel, hf_generation):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert imported <= {"__future__", "collections", "dataclasses", "typing", "torch", "transformers"}, imported
    _, export = trained
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", KERNEL_ALONE, str(export), json.dumps(KERNEL_FACTS),
                          json.dumps(KERNEL_SETTINGS)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    logits = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    run = diffusion_kernel.sample(lambda ids, key_mask, cache: logits[ids.cumsum(1) % 1000], KERNEL_FACTS,
                                  torch.tensor([[5, 6, 7]]), None, KERNEL_SETTINGS)
    assert json.loads(out.stdout.splitlines()[-1]) == run.ids.tolist()


def test_the_readme_example_runs_on_an_export(trained, capsys):
    import re

    _, export = trained
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(from transformers import AutoModelForCausalLM.*?)```", readme, re.DOTALL).group(1)
    exec(code.replace("runs/tiny/instruct", str(export)), {})
    _, _, expected, tok = sampler_tokens(export, texts=["def add(a, b):\n"], length=56, steps=4)  # the run's steps
    completion = tok.decode(expected[0], skip_special_tokens=True)
    printed = capsys.readouterr().out
    assert printed == f"{completion}\n{completion}\n"  # streamed, then printed: the sampler's greedy completion
