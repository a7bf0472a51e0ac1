"""Redis Streams: the sink, its disk spool, entry IDs and the subscriber that reads them back."""
