"""The completion routes (`/v1/chat/completions`, `/v1/completions`): an ensemble's annotation or a member's
passthrough. Imports nothing: the batch worker uses the service without the routes."""
