"""Plumbing the core files lean on, kept out of the reader's way: Hugging Face folders (config
checks, safetensors, atomic publish), tokenizers, the GGUF -> HF conversion of the default model,
where caches and assets live, and run folders (lock, checkpoints, publish). None of it is the
method."""
