"""A run's report from its files alone: records and the CSV (table), markdown sections, plots, the
memory chart, the comparison of two runs, and the closing lines on the terminal (summary).

No torch import anywhere in this package: a report builds on a machine without PyTorch. Start at
build.build_report.
"""
