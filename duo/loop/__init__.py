"""The loop around the DVC stages: the make-cycle driver, the gate's verdict, delivery of the best cycle, status, and the cost estimate before paying."""
