"""The domain: definitions, queues, environments, jobs, states, retries and scheduling."""
