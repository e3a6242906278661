"""What runs beside the service, not in it: labelling jobs, evaluation, tuning, reports, the demo and
the local pool of real models. Their extra dependencies (tqdm, matplotlib, the openai client) come
with the `tools` extra and are imported only when a tool runs."""

import argparse


class UsageError(Exception):
    """A problem with a tool's command line or input, which `crowd-gateway` reports in one line (exit 2)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The subcommands' help: their module docstring as written, and every option's default shown (unless its
    help already names it, or it has none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def usd(amount: float) -> str:
    """A running cost, readable at local prices too (fractions of a cent): six decimals."""
    return f"${amount:.6f}"


def add_no_cache(parser: argparse.ArgumentParser) -> None:
    """`--no-cache` (sets `cache` False): every member is asked again, none answers from the gateway's response
    cache, so what is reported is what the ensemble costs, not what this run spent."""
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="ask every member again: no vote comes from the gateway's response cache (by default a "
                             "member asked exactly what it was asked before answers from it, at no cost)")
