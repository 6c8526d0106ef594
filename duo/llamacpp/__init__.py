"""llama.cpp: one build per machine and flavour, its converter, loads, server.

llama.cpp, one build per machine and flavour: which build (gpu), compiling llama-server (builds),
the converter scripts (converter), load arguments and the prompt a GGUF renders (local_llm), and
llama-server on loopback (llama_server). Nothing here imports anything else of duo but machine."""
