"""The train-vision report: the training suites' shared sections (``structbench.report.training``)."""
from structbench.report.training import summary, train_report

REPORTS = {"train-vision": train_report}
SUMMARIES = {"train-vision": summary}
TABLES = {"train-vision": {"headline": summary}}
