"""The run itself: the Pipeline, its queues, the inference scheduler and context pool, the ledger and the ordered publisher."""
