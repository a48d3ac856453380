"""Training setup: adapters (peft), the reference policy, one optimisation interface over two backends.

Nothing algorithmic lives here. The trainer calls, per micro-batch, `engine.backward(loss)` then `engine.step()`;
`step()` returns None between gradient-accumulation boundaries and a `StepResult` at each boundary.

Backends of `TrainEngine`:
- `"torch"`: one process, `torch.optim.AdamW` over the trainable parameters.
- `"deepspeed"`: `deepspeed.initialize` with a ZeRO stage 2/3 JSON from `configs/deepspeed/`, filled with our
  values by `rlwork.runtime.ds_config` (bf16 on for CUDA, off on CPU). We pass a `torch.optim.AdamW`, so no fused
  Adam is compiled; the `*_offload.json` configs need DeepSpeed's `DeepSpeedCPUAdam` instead, built here, which
  compiles a C++ op on first use (measured ~3 min on 2 busy cores, then ~6 s; cache it with `TORCH_EXTENSIONS_DIR`).
  ZeRO-3 models are partitioned by `deepspeed.initialize`, so each rank first loads the whole model in host memory.

Non-finite updates never reach the weights. A non-finite loss is marked at `backward`: the torch backend skips the
backward pass and the whole accumulation window; the DeepSpeed backend still runs the backward (every rank must
join the gradient reduction, or the others hang) on `loss * nan`, which makes every gradient that depends on the
loss NaN. At the boundary, a non-finite total gradient norm skips the optimizer step: the torch backend checks
the norm itself; DeepSpeed's ZeRO-2/3 optimizers do the same check in fp32 and in bf16 (there only while
`bf16.check_grad_overflow` keeps its default, true: do not turn it off in the JSON). An invalid global norm sets
`optimizer.overflow`, the step is dropped, gradients are cleared and `engine.skipped_steps` grows; we read
`skipped_steps` before and after the step. Reduced gradients are averaged over ranks, so all ranks skip together.

Ranks, the process group and how to launch several processes: `rlwork.runtime.dist`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rlwork.runtime.dist import init_distributed
from rlwork.runtime.ds_config import deepspeed_config, offloads_optimizer

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------------------------------------------------
# Adapters and the reference policy


def apply_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] = LORA_TARGETS,
) -> nn.Module:
    """Wrap `model` in a peft LoRA adapter (a plain PeftModel); only adapter weights stay trainable.

    `r=0` means full fine-tuning: the model is returned unwrapped with every parameter trainable.
    """
    if r < 0:
        raise ValueError(f"lora r={r}: use a positive rank, or 0 for full fine-tuning")
    if r == 0:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    # No task type: peft's causal-LM wrapper reads the model's `prepare_inputs_for_generation`, which Dream's class
    # lacks under transformers 5 (its only mixin is its own diffusion_generate), and rlwork never calls peft's
    # generate. The plain PeftModel forwards every keyword to the model.
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    return get_peft_model(model, config)


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def reference_context(model: nn.Module) -> contextlib.AbstractContextManager:
    """Context in which `model` (a PeftModel) computes the reference policy: the base with the adapter disabled."""
    if not is_peft(model):
        raise ValueError(
            "reference_context needs a LoRA (peft) model; with full fine-tuning the reference is a frozen copy: "
            "use RefPolicy.build(..., copy_for_full_ft=True)"
        )
    return model.disable_adapter()


class RefPolicy:
    """The KL anchor pi_ref. `with ref.context() as ref_model: lm.forward(..., model=ref_model)`.

    LoRA: the policy itself with its adapter disabled; costs no memory. Full fine-tuning: a frozen deep copy of the
    initial model, which costs one more model's parameters per rank (16 GB for an 8B model in bf16); it is made
    only when asked for (`copy_for_full_ft=True`), since silently doubling memory is worse than an error.
    """

    def __init__(self, peft_model: nn.Module | None, frozen_copy: nn.Module | None):
        self._peft_model = peft_model
        self._frozen_copy = frozen_copy

    @classmethod
    def build(cls, model: nn.Module, beta: float, *, copy_for_full_ft: bool = False) -> RefPolicy | None:
        """Reference for policy `model` (before wrapping in an engine); None when beta == 0 (no KL term)."""
        if beta < 0:
            raise ValueError(f"beta={beta}: the KL coefficient must be >= 0")
        if beta == 0:
            return None
        if is_peft(model):
            return cls(model, None)
        if not copy_for_full_ft:
            raise ValueError(
                f"algo.beta={beta} with full fine-tuning needs a reference model: set algo.reference_copy=true (a "
                "frozen copy: one more model in memory), lora.enabled=true (the reference is then the "
                "adapter-disabled base, free), or algo.beta=0"
            )
        frozen = copy.deepcopy(model).eval()
        frozen.requires_grad_(False)
        return cls(None, frozen)

    @contextlib.contextmanager
    def context(self, module: nn.Module | None = None) -> Iterator[nn.Module]:
        """Yield the module to run the reference forward on.

        `module`: what the policy forward is called on (e.g. `engine.module`); with LoRA it is yielded with the
        adapter of the underlying peft model disabled. Defaults to the peft model itself.
        """
        if self._frozen_copy is not None:
            yield self._frozen_copy
            return
        with torch.no_grad(), self._peft_model.disable_adapter():
            yield module if module is not None else self._peft_model


# ---------------------------------------------------------------------------------------------------------------
# The engine


@dataclass(frozen=True)
class StepResult:
    """The outcome of one optimizer boundary.

    Attributes:
        applied: False when a non-finite loss or gradient skipped the update (weights and optimizer untouched).
        grad_norm: total gradient norm before clipping; inf or nan when skipped.
    """

    applied: bool
    grad_norm: float


class TrainEngine:
    """One optimisation interface over plain torch and DeepSpeed. Build with `TrainEngine.create`.

    Attributes:
        module: call the forward on this (the DeepSpeed engine, or the model itself).
        model: the unwrapped model (PeftModel or the base) for saving and `disable_adapter`.
        backend: "torch" or "deepspeed". zero_stage: 0 for torch.
        skipped_steps: boundaries whose update was skipped as non-finite.
    """

    def __init__(self, *, model: nn.Module, module: nn.Module, backend: str, optimizer: Any,
                 gradient_accumulation_steps: int, max_grad_norm: float, zero_stage: int):
        self.model = model
        self.module = module
        self.backend = backend
        self.optimizer = optimizer
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.zero_stage = zero_stage
        self.skipped_steps = 0
        self.micro_steps = 0
        self._window_finite = True

    @classmethod
    def create(
        cls,
        model: nn.Module,
        *,
        backend: Literal["torch", "deepspeed"] = "torch",
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_grad_norm: float = 1.0,
        gradient_accumulation_steps: int = 1,
        micro_batch_size: int = 1,
        deepspeed_config_path: str | Path | dict = "zero2",
    ) -> TrainEngine:
        """Wrap `model` (already LoRA-wrapped or not) with an optimizer over its trainable parameters.

        max_grad_norm: clip threshold; must be > 0 because the non-finite check reads the norm it computes.
        """
        if gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps={gradient_accumulation_steps}: must be >= 1")
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm}: must be > 0 (use a large value to not clip)")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: apply LoRA (r > 0) or unfreeze it")
        opt_kwargs = dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
        common = dict(gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm)
        if backend == "torch":
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each rank would train its own copy, silently
                raise ValueError("engine backend 'torch' is single-process; under torchrun/deepspeed use 'deepspeed'")
            optimizer = torch.optim.AdamW(params, **opt_kwargs)
            return cls(model=model, module=model, backend="torch", optimizer=optimizer, zero_stage=0, **common)
        if backend != "deepspeed":
            raise ValueError(f"engine backend '{backend}': choose 'torch' or 'deepspeed'")
        import deepspeed

        init_distributed()
        on_gpu = next(model.parameters()).device.type == "cuda"
        cfg = deepspeed_config(deepspeed_config_path, micro_batch_size=micro_batch_size,
                               gradient_accumulation_steps=gradient_accumulation_steps,
                               max_grad_norm=max_grad_norm, bf16=on_gpu)
        if offloads_optimizer(cfg):
            from deepspeed.ops.adam import DeepSpeedCPUAdam  # compiles cpu_adam on first use

            optimizer = DeepSpeedCPUAdam(params, adamw_mode=True, **opt_kwargs)
        else:
            optimizer = torch.optim.AdamW(params, **opt_kwargs)
        ds_engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
        stage = int(cfg.get("zero_optimization", {}).get("stage", 0))
        return cls(model=model, module=ds_engine, backend="deepspeed", optimizer=ds_optimizer, zero_stage=stage,
                   **common)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def at_boundary(self) -> bool:
        """Whether the next `step()` applies an update (ends an accumulation window)."""
        if self.backend == "deepspeed":
            return self.module.is_gradient_accumulation_boundary()
        return (self.micro_steps + 1) % self.gradient_accumulation_steps == 0

    def require_window_start(self, action: str) -> None:
        """Raise ValueError unless no accumulation window is half done (state is saved/loaded between windows)."""
        # gradients of a half-done accumulation window are not saved, and DeepSpeed does not restore its micro-step
        # counter: state moves only between windows
        if self.micro_steps % self.gradient_accumulation_steps:
            raise ValueError(
                f"cannot {action} in the middle of a gradient accumulation window (micro-step {self.micro_steps}, "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}): do it right after an update"
            )

    def backward(self, loss: Tensor) -> bool:
        """Accumulate gradients of `loss` (scaled by 1/gradient_accumulation_steps). Returns whether it was finite."""
        finite = bool(torch.isfinite(loss.detach()).all())
        self._window_finite &= finite
        if self.backend == "deepspeed":
            # every rank must run the backward (collective reductions); NaN-poison it so DeepSpeed skips the step
            self.module.backward(loss if finite else loss * float("nan"))
        elif finite:
            (loss / self.gradient_accumulation_steps).backward()
        return finite

    def step(self) -> StepResult | None:
        """End a micro-batch; at an accumulation boundary clip, step and zero the gradients.

        Returns None between boundaries, else a `StepResult` (a non-finite window is skipped and reported).
        """
        boundary = self.at_boundary
        self.micro_steps += 1
        if self.backend == "deepspeed":
            before = self.module.skipped_steps
            self.module.step()
            if not boundary:
                return None
            self._window_finite = True
            applied = self.module.skipped_steps == before
            self.skipped_steps += int(not applied)
            norm = self.module.get_global_grad_norm()
            return StepResult(applied=applied, grad_norm=float("nan") if norm is None else float(norm))
        if not boundary:
            return None
        params = self.trainable_parameters()
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        applied = self._window_finite and math.isfinite(norm)
        if applied:
            self.optimizer.step()
        else:
            self.skipped_steps += 1
            norm = norm if not math.isfinite(norm) else float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        self._window_finite = True
        return StepResult(applied=applied, grad_norm=norm)

    # -- state, used by rlwork.runtime.checkpoint ---------------------------------------------------------------------

    def save_state(self, directory: Path) -> None:
        """Optimizer and trainable weights into `directory` (every rank must call this for DeepSpeed)."""
        self.require_window_start("save")
        directory.mkdir(parents=True, exist_ok=True)
        if self.backend == "deepspeed":
            self.module.save_checkpoint(str(directory), tag="engine", exclude_frozen_parameters=True,
                                        client_state={"rlwork_skipped_steps": self.skipped_steps,
                                                      "rlwork_micro_steps": self.micro_steps})
            return
        trainable = {n: p.detach().clone() for n, p in self.named_trainable_parameters()}
        torch.save({"trainable": trainable, "optimizer": self.optimizer.state_dict(),
                    "skipped_steps": self.skipped_steps, "micro_steps": self.micro_steps},
                   directory / "engine.pt")

    def load_state(self, directory: Path) -> None:
        """Inverse of `save_state`: restores trainable weights and optimizer state in place."""
        self.require_window_start("load")
        if self.backend == "deepspeed":
            _, client = self.module.load_checkpoint(str(directory), tag="engine", load_module_strict=False)
            if client is None:
                raise ValueError(f"{directory}: no DeepSpeed engine state could be loaded")
            self.skipped_steps = client.get("rlwork_skipped_steps", 0)
            self.micro_steps = client.get("rlwork_micro_steps", 0)
            return
        path = directory / "engine.pt"
        if not path.is_file():
            raise ValueError(f"{path} is missing: this checkpoint was not written by the torch engine backend")
        state = torch.load(path, map_location="cpu", weights_only=True)
        params = dict(self.named_trainable_parameters())
        if set(params) != set(state["trainable"]):
            raise ValueError(f"{path}: its trainable parameters do not match the model's (other LoRA settings?)")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.skipped_steps = state["skipped_steps"]
        self.micro_steps = state["micro_steps"]


def gathered_parameters(engine: TrainEngine) -> contextlib.AbstractContextManager:
    """Gather ZeRO-3 partitioned parameters once for a whole phase (e.g. rollout); a no-op below stage 3.

    Inside, every rank holds the full weights (memory: one whole model per rank) and forwards (on `engine.module`
    or `engine.model`) need no per-layer all-gathers. Inference only: no backward inside; weight changes made inside
    are discarded. A bare `deepspeed.zero.GatheredParameters` is not enough: ZeRO-3's module hooks re-partition
    each layer after its forward (measured: the first forward inside releases them). DeepSpeed's own
    `unwrap_model_for_generation` gathers once and removes those hooks for the duration, re-adding them on exit.

    Ranks may run different numbers of forwards inside (a rollout whose rows stop early, phase 4 scoring only each
    rank's signal rows): no collective runs in a forward here. `unwrap_model_for_generation` keeps one hook, ZeRO-3's
    start-of-forward hook on the top module, whose trace bookkeeping runs collectives (`reset_step` checks that the
    ranks recorded the same module order) until a trace is complete: two ranks with different numbers of forwards
    then waited on each other for good (measured: a rank without signal in phase 4 hung a 2-rank ZeRO-3 step). With
    every weight gathered the hook has nothing to do, so it is detached for the phase too and re-attached after.
    """
    if engine.backend != "deepspeed" or engine.zero_stage < 3:
        return contextlib.nullcontext()
    return _zero3_gathered(engine.module)


@contextlib.contextmanager
def _zero3_gathered(ds_engine) -> Iterator[None]:
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    offload = getattr(ds_engine.optimizer, "parameter_offload", ds_engine.optimizer)
    handle = getattr(offload, "fwd_pre_hook", None)  # DeepSpeed's name for the start-of-forward hook's handle
    with unwrap_model_for_generation(ds_engine):
        hooks = offload.module._forward_pre_hooks
        saved = hooks.pop(handle.id, None) if handle is not None else None
        try:
            yield
        finally:
            if saved is not None:  # back in first place, before the module hooks that unwrap re-adds on exit
                hooks[handle.id] = saved
