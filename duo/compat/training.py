"""TRL, transformers and PEFT internals the finetune core relies on (see duo/compat/__init__.py)."""
from __future__ import annotations

from duo.compat import register


# ---- TRL -----------------------------------------------------------------------------------------
TRL_FUSED_HEAD = ("trl.trainer.utils", "_use_triton")


def trl_fused_head_module():
    """The module whose `_use_triton(device)` decides compact (labelled positions only) vs fixed-shape
    scoring in TRL's fused LM head."""
    import importlib

    return importlib.import_module(TRL_FUSED_HEAD[0])


@register("trl.trainer.utils._use_triton", "score only labelled positions in the LM head on CPU",
          "duo/train/levers.py: score_labelled_positions_only")
def _check_trl_fused_head():
    import torch

    flag = getattr(trl_fused_head_module(), TRL_FUSED_HEAD[1])
    assert isinstance(flag(torch.device("cpu")), bool)


# ---- transformers Trainer ------------------------------------------------------------------------
TRAINER_SAVE, TRAINER_OUTPUT_DIR = "_save_checkpoint", "_get_output_dir"


@register("transformers.Trainer._save_checkpoint / _get_output_dir",
          "write each checkpoint into a staging folder, seal it, rename it in (crash-safe resume)",
          "duo/train/checkpoints.py: Checkpoints.attach")
def _check_trainer_hooks():
    import inspect

    from transformers import Trainer

    save = inspect.signature(getattr(Trainer, TRAINER_SAVE))
    assert list(save.parameters)[:3] == ["self", "model", "trial"], save
    out = inspect.signature(getattr(Trainer, TRAINER_OUTPUT_DIR))
    assert list(out.parameters)[:2] == ["self", "trial"], out


TRAINER_SAMPLER = "_get_train_sampler"


def seed_rebalanced_batches(trainer) -> None:
    """Trainer builds its BatchRebalanceSampler with the sampler's default seed (42) whatever the run's
    seed; give it the run's data seed, so finetune.seed changes the data order as it does for random."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    build = getattr(trainer, TRAINER_SAMPLER)

    def seeded(*args, **kwargs):
        sampler = build(*args, **kwargs)
        if isinstance(sampler, BatchRebalanceSampler):
            sampler.seed = trainer.args.data_seed if trainer.args.data_seed is not None else trainer.args.seed
        return sampler

    setattr(trainer, TRAINER_SAMPLER, seeded)


@register("transformers.Trainer._get_train_sampler / BatchRebalanceSampler.seed",
          "finetune.seed orders the rebalanced batches (finetune.batches: rebalanced)",
          "duo/compat/training.py: seed_rebalanced_batches")
def _check_rebalance_seed():
    import inspect

    from transformers import Trainer
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    assert list(inspect.signature(getattr(Trainer, TRAINER_SAMPLER)).parameters)[:2] == ["self", "train_dataset"]
    orders = []
    for seed in (1, 2):
        sampler = BatchRebalanceSampler(lengths=list(range(10, 42)), effective_batch_size=8, dp_size=1, grad_accum=2)
        sampler.seed = seed
        orders.append([list(b) for b in sampler])
    assert orders[0] != orders[1] and sorted(sum(orders[0], [])) == list(range(32))


# ---- transformers decoder models -----------------------------------------------------------------
@register("transformers *Model.embed_tokens / .layers[i].forward", "serve frozen layers' outputs from a "
          "cache (lora.layers < all)", "duo/train/frozen_layers.py")
def _check_decoder_layout():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    decoder = model.model
    assert hasattr(decoder, "embed_tokens") and len(decoder.layers) == 2 and hasattr(decoder, "rotary_emb")
    seen = []
    original = decoder.layers[0].forward
    decoder.layers[0].forward = lambda hidden_states, *a, **kw: (seen.append(hidden_states.shape),
                                                                 original(hidden_states, *a, **kw))[1]
    model(torch.tensor([[1, 2, 3]]))
    assert seen == [torch.Size([1, 3, 16])], "decoder layers are called with the hidden states first"


# ---- PEFT ----------------------------------------------------------------------------------------
def lora_dropouts(module):
    """A LoRA layer's per-adapter dropout modules (a ModuleDict), or None for other modules."""
    import torch

    drops = getattr(module, "lora_dropout", None)
    return drops if isinstance(drops, torch.nn.ModuleDict) else None


@register("peft LoraLayer.lora_dropout", "swap LoRA's nn.Dropout for 16-bit masks on CPU",
          "duo/train/levers.py: cheap_dropout_masks")
def _check_lora_dropout():
    import torch
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model = get_peft_model(base, LoraConfig(r=2, lora_dropout=0.1, target_modules=["0"]))
    found = [lora_dropouts(m) for m in model.modules() if lora_dropouts(m) is not None]
    assert found and isinstance(found[0]["default"], torch.nn.Dropout)
