"""The loop around the stages: make cycle, the gate, delivery, status, estimate.

The make-cycle driver (cycle) over DVC experiments (experiments), the gate's verdict (gate), delivery
of the best cycle (delivery), `duo status` (status), and the cost before paying (estimate)."""
