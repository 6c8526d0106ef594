"""What a person reads: the report, its charts, the break-even, the model card."""
