"""The run itself: the Pipeline, its queues, the inference scheduler and context pool,
the escalation ladder, the ledger and the ordered publisher."""
