"""The parent's loop: a session settles the shared facts, the ladder orders the stages, each
comparison runs in paired rounds (rounds) through a launcher (workbench.launch), the judge turns the
measurements into verdicts, and result/record hold the stage result, written and read back typed.

Imports run one way: this package uses the leaf modules (config, results, stats, ...), the training
data (workbench.training), the trace analysis (workbench.trace) and the launchers (workbench.launch);
it never imports the measuring child (workbench.measure) nor the report.
"""
