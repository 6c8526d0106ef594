"""Run the frozen bottom of the model once per row, not once per epoch.

With `finetune.lora.layers: N`, LoRA adapts only the top N decoder layers. The layers below are frozen
and deterministic (the base model has no dropout), so a row's hidden state entering the lowest adapted
layer is the same in every epoch. This computes it the first time a row is seen (without autograd, one
row at a time, unpadded) and afterwards hands the cached state to the top layers, which then are all
that runs forward and backward. Training is unchanged up to float rounding (tests compare the loss
curves and adapters with the cache on and off).

It hooks the inner decoder model without changing its module tree, so adapters and checkpoints keep
their names: the embedding returns the cached states and the frozen layers pass them through.
"""
from __future__ import annotations

import functools
import hashlib


class FrozenLayerCache:
    def __init__(self, decoder, n_frozen: int, max_bytes: int):
        import torch

        self.decoder = decoder  # a transformers *Model (embed_tokens, layers, rotary_emb, config)
        self.frozen = list(decoder.layers[:n_frozen])
        self.max_bytes = max_bytes
        self.cache: dict[bytes, "torch.Tensor"] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._mask = None
        self._active = False
        self._embed = decoder.embed_tokens.forward
        self._layer_forward = [layer.forward for layer in self.frozen]
        self._hook = decoder.register_forward_pre_hook(self._remember_mask, with_kwargs=True)
        decoder.embed_tokens.forward = self._embed_or_cached
        for layer, forward in zip(self.frozen, self._layer_forward):
            layer.forward = functools.partial(self._pass_through_when_cached, forward)
        self._torch = torch

    def remove(self) -> None:
        self._hook.remove()
        del self.decoder.embed_tokens.forward
        for layer in self.frozen:
            del layer.forward
        self.cache.clear()

    def stats(self) -> dict:
        return {"rows_cached": len(self.cache), "cache_mb": round(self.bytes / 2**20, 1),
                "hits": self.hits, "misses": self.misses}

    def _remember_mask(self, module, args, kwargs):
        self._mask = kwargs.get("attention_mask")
        # only a training forward (gradients on) over right-padded rows is served from the cache;
        # generation, evaluation and anything with a KV cache take the model's own path
        self._active = (module.training and self._torch.is_grad_enabled()
                        and kwargs.get("inputs_embeds") is None and kwargs.get("past_key_values") is None
                        and kwargs.get("position_ids") is None and _right_padded(self._mask))
        return None

    def _pass_through_when_cached(self, forward, hidden_states, *args, **kwargs):
        # the embedding already returned the state after the last frozen layer
        return hidden_states if self._active else forward(hidden_states, *args, **kwargs)

    def _embed_or_cached(self, input_ids):
        if not self._active:
            return self._embed(input_ids)
        batch, length = input_ids.shape
        lengths = (self._mask.sum(dim=1).tolist() if self._mask is not None else [length] * batch)
        out = None
        for b, n in enumerate(lengths):
            ids = input_ids[b, :n]
            key = hashlib.blake2b(ids.cpu().numpy().tobytes(), digest_size=16).digest()
            state = self.cache.get(key)
            if state is None:
                self.misses += 1
                state = self._frozen_forward(ids)
                size = state.numel() * state.element_size()
                if self.bytes + size <= self.max_bytes:
                    self.cache[key] = state
                    self.bytes += size
            else:
                self.hits += 1
            if out is None:
                out = state.new_zeros(batch, length, state.shape[-1])
            out[b, :n] = state
        return out

    def _frozen_forward(self, ids):
        from transformers.masking_utils import create_causal_mask

        torch = self._torch
        with torch.no_grad():
            hidden = self._embed(ids[None])
            position_ids = torch.arange(ids.shape[0], device=ids.device)[None]
            mask = create_causal_mask(config=self.decoder.config, inputs_embeds=hidden,
                                      attention_mask=torch.ones_like(ids)[None], past_key_values=None,
                                      position_ids=position_ids)
            rotary = self.decoder.rotary_emb(hidden, position_ids=position_ids)
            for forward in self._layer_forward:
                hidden = forward(hidden, attention_mask=mask, position_ids=position_ids,
                                 position_embeddings=rotary, use_cache=False)
        return hidden[0].detach()


def _right_padded(mask) -> bool:
    """Every row's real tokens come first (TRL's collator pads on the right)."""
    if mask is None:
        return True
    if mask.dim() != 2:
        return False
    lengths = mask.sum(dim=1, keepdim=True)
    positions = mask.new_ones(mask.shape).cumsum(dim=1)
    return bool(((positions <= lengths) == mask.bool()).all())


def install(model, n_layers_adapted, max_bytes: int) -> FrozenLayerCache | None:
    """Cache the frozen bottom of a PEFT-wrapped causal LM whose LoRA adapts only its top layers."""
    if n_layers_adapted == "all":
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, base.base_model_prefix, None)
    if decoder is None or not all(hasattr(decoder, a) for a in ("embed_tokens", "layers", "rotary_emb")):
        return None
    n_frozen = len(decoder.layers) - n_layers_adapted
    if n_frozen < 1:
        return None
    if any(param.requires_grad for layer in decoder.layers[:n_frozen] for param in layer.parameters()):
        return None
    return FrozenLayerCache(decoder, n_frozen, max_bytes)
