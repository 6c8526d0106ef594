"""Training the student: the finetune core and what it stands on.

Training the student: the finetune core, its levers, the frozen-layer cache, crash-safe checkpoints."""
