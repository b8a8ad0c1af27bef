"""GGUF for llama.cpp: the per-layer `deci` layout writer, tokenizer fields, and the check that the file decodes
like its checkpoint (through `llamacpp`, which runs llama.cpp from tools/llamacpp)."""
