"""What a model needs to load, fit and run on its GPU, one job per module:
  loading    the device and dtype, the tokenizer, the base model (16-bit or 4-bit), LoRA / DoRA adapters,
             Liger kernels, regional compile, gradient checkpointing of chosen layers
  attention  attention over packed rows (varlen FlashAttention, flash_attention_2, SDPA)
  batch      one micro-batch of packed rows moved to the device, with its sequence boundaries
  loss       the cross-entropy over chunks of tokens, never the whole logits tensor
  offload    checkpointed layers' inputs kept in host RAM; the MLP over slices of a long row
  fit        the micro-batch, checkpointed layers and offloading that fit (probed on the GPU)
  flops      FLOPs per token and MFU (the LoRA convention); the GPUs' bf16 peaks
  logps      summed log-probabilities of each packed sequence's trained tokens
  pair_losses  the preference pair losses (sigmoid DPO, IPO, SimPO, ORPO) and their rewards
  pair_scores  preference pairs scored: policy and adapter-off reference -> loss, rewards, margins
  preference_cost  what a preference step adds to a supervised one (the reference forward, the logits)

Imports: the config only. Everything else in the package may use this one; it uses none of them.
"""
