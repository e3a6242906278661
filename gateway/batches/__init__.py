"""OpenAI's Files and Batches API on the gateway: durable annotation jobs run by an in-process worker."""

from gateway.batches.routes import router
from gateway.batches.service import Batches

__all__ = ["Batches", "router"]
