"""What tests share: the app in process, direct database access, Kafka, leak checks, a clock, a publisher."""
