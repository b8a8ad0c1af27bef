"""The export stage: a search run's architecture as a smaller Hugging Face checkpoint (`checkpoint`) and as a
llama.cpp GGUF file (`gguf/`)."""
