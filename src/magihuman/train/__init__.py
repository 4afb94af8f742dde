"""Training: dataset and latent cache, flow-matching fine-tuning and LoRA, DMD-2 distillation (issue 11).

Modules (imports stay lazy here: ``import magihuman.train`` loads no torch):

* :mod:`~magihuman.train.dataset`: clip manifests (folder, CSV, JSONL) and size/length buckets;
* :mod:`~magihuman.train.video_io`: clip frames read at 25 fps and preprocessed as inference does;
* :mod:`~magihuman.train.cache`: the latent cache that ``magihuman train prepare`` writes;
* :mod:`~magihuman.train.prepare`: encoding clips into the cache (Wan2.2 VAE, Stable Audio VAE, T5Gemma);
* :mod:`~magihuman.train.config`: the pydantic training configuration;
* :mod:`~magihuman.train.objective`: the flow-matching loss of the shipped sampler;
* :mod:`~magihuman.train.trainer`: the training loop (full fine-tune and LoRA), checkpoints, resume;
* :mod:`~magihuman.train.lora`: LoRA layers for the expert linears through PEFT, adapter files;
* :mod:`~magihuman.train.distill`: DMD-2 distillation to the 8-step sampler;
* :mod:`~magihuman.train.memory`: per-GPU memory estimates from the model config;
* :mod:`~magihuman.train.cli`: the ``magihuman train`` commands.
"""
