"""duo: migrate one task's skill from a service LLM into a small local GGUF model (LlamaDuo)."""
import os

# litellm fetches its price table from the network at import unless told otherwise;
# these machines (and air-gapped users) have no network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

__version__ = "0.1.0"
