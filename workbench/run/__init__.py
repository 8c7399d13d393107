"""The flow of a run: a session settles the shared facts, the ladder orders the stages, each
comparison runs in paired rounds (rounds, pair) in fresh processes (procs, worker_entry, worker),
the executor measures one configuration, and judge turns the measurements into verdicts.

Imports run one way: this package uses the leaf modules (config, results, stats, ...), the training
step (workbench.training) and the trace (workbench.trace); it never imports the report.
"""
