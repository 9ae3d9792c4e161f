"""The columns every lakeloop model answers with: what the pyfunc returns, Serve returns and logs,
and the monitor scores."""

from __future__ import annotations

PREDICTION_COLUMN = "prediction"  # the class (classification) or the value (regression)
PROBABILITY_PREFIX = "probability_"  # classification: one column per class, probability_<class>
UNKNOWN_CATEGORIES_ATTR = "lakeloop_unknown_categories"  # output.attrs: {column: values not in its vocabulary}
