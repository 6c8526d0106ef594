"""The user's data: strict JSONL records, coverage rows and conversations, the normal form texts are compared in, the split, and imports from other formats and logs."""
