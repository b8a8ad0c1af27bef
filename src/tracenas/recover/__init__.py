"""Recovery: continued pretraining (CPT) of a pruned (or dense) causal LM on the training split.

    tracenas recover runs/demo/model --preset quick --out runs/demo/recovered
    tracenas recover runs/demo/model --out runs/demo/recovered --resume          # after a kill
    accelerate launch -m tracenas recover runs/demo/model --preset paper --tokens 2B --out ...
    torchrun --nproc_per_node 8 -m tracenas recover runs/demo/model --preset paper --out ...

The loop is plain PyTorch driven by `accelerate`, so the same code runs single-process on CPU and
with DDP (or FSDP, through an accelerate config) on many GPUs. Data is the training split of `--data`
cut into non-overlapping `seq_len` windows whose order is a seeded permutation per epoch; optimizer
step `i` always consumes global windows `[i*B, (i+1)*B)`, so a resumed run sees exactly the batches an
uninterrupted run would. Checkpoints (`OUT/checkpoints/step-N/`) hold the weights, the AdamW state and
the RNG states as safetensors plus a JSON header; with the same config a resumed run ends with
bit-identical weights on CPU. See docs/recovery.md for the presets and the outputs.

    config      RecoverConfig, presets, RecoverResult    schedule     lr_at
    windows     TrainWindows: seeded training windows    losses       _LossModel
    checkpoints save, find, load, resume fingerprint     plots        plot_loss (loss.png)
    save        save_recovered (input's format)          runner       recover: the training loop

Everything below is importable from `tracenas.recover` itself.
"""

from __future__ import annotations

from tracenas.runtime.lazy import lazy_exports

# public name -> the submodule that defines it
_EXPORTS = {
    "CHECKPOINTS": "checkpoints",
    "DTYPES": "config",
    "PRESETS": "config",
    "SCHEDULES": "config",
    "RecoverConfig": "config",
    "RecoverResult": "config",
    "parse_count": "config",
    "plot_loss": "plots",
    "recover": "runner",
    "is_done": "runner",
    "Recovery": "runner",
    "save_recovered": "save",
    "lr_at": "schedule",
    "TrainWindows": "windows",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
