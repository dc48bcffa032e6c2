"""Secret events: the outbox they are written to, the relay that publishes them to Kafka, and consumers."""
