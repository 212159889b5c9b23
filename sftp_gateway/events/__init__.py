"""Upload events: their schema, and the outbox dispatcher that sends them to SQS."""
