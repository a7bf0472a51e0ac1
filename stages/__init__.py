"""Pipeline stages: each turns one item into the next; the runtime owns threads and queues."""
