"""What a person reads: the HTML/Markdown report, its charts, the break-even of service vs local box, and the model card."""
