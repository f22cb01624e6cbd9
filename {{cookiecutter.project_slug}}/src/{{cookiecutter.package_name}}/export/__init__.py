"""Ship what was trained, one module per target:
  vllm       the adapter as vLLM serves it, after vLLM's rules (DoRA, modules_to_save, bias, rank);
             the exact `vllm serve` line; a merged model instead when vLLM would refuse the adapter
  merged     the adapter merged into its 16-bit base (`merge`), and its held-out loss next to the adapter's
  gguf       a GGUF file of the merged model (F16, BF16, Q8_0) written with the `gguf` package, per family
  gguf_vocab the tokenizer inside the GGUF: tokens, merges, pre-tokenizer, special ids, chat template
  ollama     a Modelfile next to the GGUF and the `ollama create` command
  checks     the GGUF read back by other code: gguf's reader (names, tokenizer) and transformers' loader (logits)
  stage      the `export` command: the chosen targets, exports.json, the run's MLflow entries

Imports: model, data, evaluate (the held-out loss and prompts), tracking, config, atomic.
`plan` and `train` import `vllm` for its warning, so it must not import torch at module level.
"""
