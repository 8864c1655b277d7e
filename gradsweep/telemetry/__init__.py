"""What a step's gradients say: fused per-layer norms and clipping (gradients), the monitor
that turns them into logged rows (monitor), and the verdict with its advice (diagnosis)."""
