"""llama.cpp: one build per machine and flavour, its converter, loads, server.

llama.cpp, one build per machine and flavour: the pinned sources, fetched once (sdist), which build
(gpu), compiling the libraries the binding loads and llama-server in one CMake build (builds), the
converter scripts (converter), load arguments and the prompt a GGUF renders (local_llm), and
llama-server on loopback (llama_server). Nothing here imports anything else of duo but machine."""
