"""Evaluation: metric conventions, the weights guard (nothing is downloaded), pixel and learned
metrics, the metric suite, tables and the HTML report, flow evaluation, and `evaluate()`."""
