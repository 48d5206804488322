"""The train-lm report: the training suites' shared sections (``structbench.report.training``)."""
from structbench.report.training import summary, train_report

REPORTS = {"train-lm": train_report}
SUMMARIES = {"train-lm": summary}
TABLES = {"train-lm": {"headline": summary}}
