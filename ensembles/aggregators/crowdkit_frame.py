"""Votes -> the (task, worker, label) DataFrame crowd-kit fits on. Imported only by `fit`, never on the request path."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pandas as pd

from ensembles.aggregators.base import Triple

warnings.filterwarnings("ignore", module="crowdkit")


def frame(votes: Sequence[Triple]) -> pd.DataFrame:
    return pd.DataFrame(list(votes), columns=["task", "worker", "label"])
