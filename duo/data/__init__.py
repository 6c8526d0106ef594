"""The user's data: records, conversations, the split, imports.

Strict JSONL records (records), coverage rows and conversations (chat), the normal form texts are
compared in (text), the split (splits), and imports from other formats and logs (importer, openai_logs)."""
