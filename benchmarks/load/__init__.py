"""Load test: a sidecar on loopback against the same model run in-process (`python -m benchmarks.load`).

Everything is measured in one run (the in-process baseline, Score at several
concurrencies, NextBatch, and optionally memory growth), so the ratios compare
like with like even on a noisy machine. The sidecar is a subprocess started
here, or with --target one already running on this machine: the tool refuses
any other host, because numbers taken across a network measure the network.

Every Score item carries a prompt the server has not seen before (a numbered
variant of a sample prompt): the score cache is keyed by prompt, so repeating
prompts would measure cache lookups instead of inference. The in-process
baseline scores the same numbered variants, so both sides tokenize and run the
same inputs.

Modules, one job each: cli (flags), target (loopback only), prompts, procfs
(/proc readers), progress, in_process (the baseline), grpc_load (the load
client), run (one run end to end), report (figures, targets, the table).
"""
