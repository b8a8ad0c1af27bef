"""One module per model family; importing this package registers every family's adapter."""

from tracenas.models.families import llama, mistral, qwen2, qwen3  # noqa: F401
