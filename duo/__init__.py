"""duo: migrate one task's skill from a service LLM into a small local GGUF model (LlamaDuo)."""

__version__ = "0.1.0"
