"""What runs beside the service, not in it: labelling jobs, evaluation, tuning, reports, the demo and
the local pool of real models. Their extra dependencies (tqdm, matplotlib, the openai client) come
with the `tools` extra and are imported only when a tool runs."""


class UsageError(Exception):
    """A problem with a tool's command line or input, which `crowd-gateway` reports in one line (exit 2)."""
