"""train and merge: the student fine-tuned on the teacher's verified answers, then merged.

- :mod:`.student`: where the student comes from (HF dir, hub id, GGUF imported once) and a
  tokenizer every later format agrees with;
- :mod:`.collate`: chat-template examples with the loss on the answer only, batches;
- :mod:`.trainer`: transformers' Trainer with KD, the labelled-tail LM head and throughput logs;
- :mod:`.kd`: logit distillation from the teacher's top-k logprobs;
- :mod:`.finetune`: the ``train`` stage (LoRA or full fine-tune, best checkpoint kept);
- :mod:`.merge`: the ``merge`` stage (adapter folded in, merged == adapter proved).

Torch, transformers and peft are imported inside functions. May import: config, rundir, data,
models, errors, evaluate (the task metric, for the dev-slice score).
"""
