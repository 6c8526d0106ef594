"""The training speed levers change nothing but speed: a padding-free (packed) batch gives the same
loss and gradients as the padded batch of the same rows, with the loss on the response only, and
scoring only labelled positions in the LM head equals scoring them all. Tiny random Llama, CPU."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration  # real training, llama.cpp, DVC or servers: make test-all

torch = pytest.importorskip("torch")


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    add_fused_lm_head(model, outputs=("log_probs",))
    return model


def _examples():
    g = torch.Generator().manual_seed(1)
    out = []
    for length, prompt in ((11, 7), (5, 2), (17, 12)):  # mixed lengths; labels on the response only
        ids = torch.randint(3, 97, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch, fused_lm_head=True)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _batches():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    padded = DataCollatorForLanguageModeling(pad_token_id=0)(_examples())
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(_examples())
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    return padded, packed


def test_padding_free_batch_equals_padded_batch():
    model = _model()
    padded, packed = _batches()
    loss_pad, grads_pad = _loss_and_grads(model, padded)
    loss_pack, grads_pack = _loss_and_grads(model, packed)
    # same labelled tokens on both sides (the collator masks each row's first token when packing)
    assert int((padded["labels"][:, 1:] != -100).sum()) == int((packed["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-6)
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_rows_do_not_attend_across_boundaries():
    """A packed row's loss must not change when its neighbour's tokens change."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = _model()
    examples = _examples()
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    with torch.no_grad():
        first = model(**collate(examples), fused_lm_head=True).log_probs
        examples[0]["input_ids"] = [(t + 5) % 97 for t in examples[0]["input_ids"]]
        second = model(**collate(examples), fused_lm_head=True).log_probs
    n0 = len(examples[0]["input_ids"])
    torch.testing.assert_close(second[:, n0:], first[:, n0:], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(second[:, :n0], first[:, :n0])


def test_scoring_labelled_positions_only_is_exact(monkeypatch):
    import trl.trainer.utils as trl_utils

    from duo.train import levers as train_levers

    model = _model()
    padded, _ = _batches()
    # start from TRL's own function even if a finetune earlier in this process installed the lever
    original = getattr(trl_utils._use_triton, "__wrapped__", trl_utils._use_triton)
    monkeypatch.setattr(trl_utils, "_use_triton", original)  # restored after the test
    assert trl_utils._use_triton(torch.device("cpu")) is False
    loss_all, grads_all = _loss_and_grads(model, padded)
    train_levers.score_labelled_positions_only()
    assert trl_utils._use_triton(torch.device("cpu")) is True
    loss_compact, grads_compact = _loss_and_grads(model, padded)
    torch.testing.assert_close(loss_compact, loss_all, rtol=1e-6, atol=1e-7)
    for name, grad in grads_all.items():
        torch.testing.assert_close(grads_compact[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_micro_batches_sum_to_the_full_batch_step():
    """batch_size rows as micro-batches: with the loss normalised by the whole step's labelled tokens
    (what Trainer passes as num_items_in_batch), the summed gradients equal the full batch's."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = _model()
    collate = DataCollatorForLanguageModeling(pad_token_id=0)
    examples = _examples()
    _, full = _loss_and_grads(model, collate(examples))
    n_items = sum(sum(label != -100 for label in e["labels"][1:]) for e in examples)
    summed: dict = {}
    for part in (examples[:2], examples[2:]):
        model.zero_grad()
        model(**collate(part), fused_lm_head=True, num_items_in_batch=n_items).loss.backward()
        for name, p in model.named_parameters():
            summed[name] = summed.get(name, 0) + p.grad
    for name, grad in full.items():
        torch.testing.assert_close(summed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_micro_batch_auto_is_the_whole_batch_on_a_gpu_and_at_most_4_rows_on_a_cpu():
    from duo.params import Finetune
    from duo.train.finetune import micro_batch

    assert micro_batch(Finetune(batch_size=8), "cuda") == 8
    assert micro_batch(Finetune(batch_size=8), "cpu") == 4
    assert micro_batch(Finetune(batch_size=6), "cpu") == 3  # divides the batch
    assert micro_batch(Finetune(batch_size=2), "cpu") == 2
    assert micro_batch(Finetune(batch_size=8, micro_batch_size=2), "cuda") == 2  # a set value is kept
    assert micro_batch(Finetune(batch_size=2, micro_batch_size=4), "cpu") == 2


def test_micro_batch_must_divide_batch():
    from duo.params import Finetune

    Finetune(batch_size=8, micro_batch_size=4).check()
    Finetune(batch_size=2, micro_batch_size=4).check()  # small batches run whole
    with pytest.raises(ValueError, match="micro_batch_size"):
        Finetune(batch_size=8, micro_batch_size=3).check()


def test_padding_free_only_without_truncation():
    from duo.train.levers import use_padding_free

    assert use_padding_free(True, [10, 20], 20)
    assert not use_padding_free(True, [10, 21], 20)
    assert not use_padding_free(False, [10], 20)


def _lora_model(dropout: float):
    from peft import LoraConfig, get_peft_model

    model = _model()
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))


def test_cheap_dropout_masks_have_dropouts_distribution():
    from duo.train import levers as train_levers

    model = _lora_model(0.05)
    assert train_levers.cheap_dropout_masks(model) == 4  # 2 layers x (q, v)
    drop = model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"]
    assert type(drop).__name__ == "MaskDropout"
    drop.train()
    torch.manual_seed(3)
    x = torch.ones(1003, 997)  # not a multiple of 4 lanes: the tail is masked too
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.95) < 0.001  # 1M draws: 5 sigma is ~0.001
    # every lane of the 64-bit draw drops at the same rate (lane 3 lacks the sign bit)
    lanes = kept.view(-1)[: x.numel() // 4 * 4].view(-1, 4).float().mean(0)
    assert (lanes - 0.95).abs().max().item() < 0.002
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], drop.scale))
    assert abs(y.mean().item() - 1.0) < 0.002  # unbiased, as nn.Dropout
    # neighbouring masks are independent draws, and a seed repeats them
    assert not torch.equal(kept, drop(x) != 0)
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    drop.eval()
    assert drop(x) is x


def test_cheap_dropout_masks_train_like_dropout():
    """Gradients flow through the kept entries only, scaled as nn.Dropout scales them; without
    dropout the swapped model is the same function."""
    from duo.train import levers as train_levers

    model = _lora_model(0.05)
    train_levers.cheap_dropout_masks(model)
    drop = model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"]
    drop.train()
    x = torch.randn(8, 64, requires_grad=True)
    torch.manual_seed(5)
    y = drop(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * drop.scale)

    plain, swapped = _lora_model(0.05).eval(), model.eval()
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(swapped(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_cheap_dropout_masks_leave_zero_dropout_alone():
    from duo.train import levers as train_levers

    assert train_levers.cheap_dropout_masks(_lora_model(0.0)) == 0


def test_heap_trim_runs_before_each_forward_and_changes_nothing(monkeypatch):
    from duo.train import levers as train_levers

    model = _model()
    padded, _ = _batches()
    want_loss, want_grads = _loss_and_grads(model, padded)
    libc = train_levers._glibc()
    assert libc is not None, "these machines run glibc"
    calls = []

    class Counting:  # the real glibc call, counted
        def malloc_trim(self, pad):
            calls.append(libc.malloc_trim(pad))
            return calls[-1]

    monkeypatch.setattr(train_levers, "_glibc", Counting)
    handle = train_levers.trim_heap_each_forward(model)
    assert handle is not None
    got_loss, got_grads = _loss_and_grads(model, padded)
    _loss_and_grads(model, padded)
    assert len(calls) == 2 and set(calls) <= {0, 1}  # one trim per forward; glibc returns 0 or 1
    assert torch.equal(got_loss, want_loss) and all(torch.equal(got_grads[n], g) for n, g in want_grads.items())
    handle.remove()


def _step_batches(seed: int, strategy: str, lengths: list[int]) -> list[list[int]]:
    """Rows per micro-batch of a Trainer's first epoch (batch 8 = 2 micro-batches of 4), as duo sets it up."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from duo.compat import training as compat

    data = Dataset.from_list([{"input_ids": list(range(1, n + 1)), "row": i} for i, n in enumerate(lengths)])
    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             train_sampling_strategy=strategy, seed=seed, data_seed=seed, use_cpu=True,
                             report_to="none", remove_unused_columns=False)
    trainer = Trainer(model=_model(), args=args, train_dataset=data, data_collator=lambda rows: [r["row"] for r in rows])
    compat.seed_rebalanced_batches(trainer)
    return list(trainer.get_train_dataloader())


def test_rebalanced_steps_hold_random_rows_in_micro_batches_of_similar_length():
    """finetune.batches: rebalanced keeps each step a random draw of 8 rows (every row once an epoch) but
    cuts it into micro-batches of similar length: less padding computed, the same summed step (above);
    finetune.seed changes the draw."""
    lengths = [400 if i % 4 == 0 else 20 + i for i in range(64)]  # mixed tasks: a quarter long
    rebalanced = _step_batches(1, "batch_rebalance", lengths)
    random_ = _step_batches(1, "random", lengths)
    assert sorted(sum(rebalanced, [])) == list(range(64)) and len(rebalanced) == 16
    assert {len(b) for b in rebalanced} != {4}  # long rows share a micro-batch with fewer others

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded(rebalanced) < 0.8 * padded(random_)
    assert _step_batches(2, "batch_rebalance", lengths) != rebalanced
    assert _step_batches(1, "batch_rebalance", lengths) == rebalanced
