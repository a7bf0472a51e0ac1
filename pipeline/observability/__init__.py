"""What a run tells the world about itself: the summary, Prometheus metrics, the live progress display and logs."""
