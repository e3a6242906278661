"""OpenAI's Files and Batches API on the gateway: durable annotation jobs run by an in-process worker.

Imports nothing: the batch worker's modules are loaded without the routes (the app imports them itself)."""
