"""Serving benchmark: held-out ShareGPT prompts replayed into a real vLLM engine under each scheduling policy.

    python -m benchmarks.serving --out serving-results

Every policy serves the same seeded sample of the ShareGPT test split (the
split the ranker never trained on), each request with `max_tokens` = its
recorded answer length / --length-scale and `ignore_eos`, so every policy
generates exactly the same tokens and only the order differs. Policies, one
fresh in-process vLLM engine each:

- fcfs:         stock vLLM scheduler, first come first served;
- ltr:          the LTR hook (`ltr_client.vllm.LTRScheduler`) with the ranker
                bundle served by a real `ltr-sidecar serve` process on
                loopback, starvation guard at its defaults;
- ltr-noguard:  the same with the starvation guard off (no promotions);
- ltr-preempt:  the same with rank preemption on (`preempt=true`): the worst-
                ranked running request gives way to a better-ranked waiting one;
- ltr-fair:     the same with the guard's overtake trigger on as well
                (`starvation_overtakes` = 2 x --max-num-seqs): a request is
                promoted once that many later arrivals have started before it,
                which bounds its wait relative to FCFS at any load;
- ltr-instant:  `ltr` as it runs when the sidecar scores a step's arrivals
                within that step (a GPU sidecar for a MiniLM ranker): the hook
                waits for every contested score (`score_wait_ms`) and the step
                clock does not count that wait (the wall clock, --clock wall,
                cannot help counting it). On this CPU the ranker costs
                about as much per prompt as the tiny engine's step, so `ltr`
                admits a burst's first batch before its scores;
- oracle:       vLLM's priority scheduling with priority = the true output
                length: shortest job first without preemption (vLLM preempts
                only when KV memory runs out), with perfect knowledge;
- bucket:       vLLM's priority scheduling with priority = the expected length
                from the 10-bucket classifier of prior work
                (`ltr_sidecar.training.baselines.BucketClassifier`, fitted on
                the train split); skipped when it cannot be imported.

Workloads: burst (all requests at t=0), online (seeded Poisson arrivals at
fractions of the capacity that FCFS reached in the burst) and synthetic data
generation (all at once; time until the first 10% finish, and completions
within a time budget). See benchmarks/README.md for the figures and plots.

The engine is a tiny random-weight Llama whose tokenizer is the ranker
bundle's own (all-MiniLM-L6-v2 WordPiece for the default bundle): the hook
decodes the engine's token ids back to text for the ranker, so the ranker
reads the real prompts, and output lengths are counted in that tokenizer.

The harness, one module per job: cli (flags and the run as a whole), trace
(the ShareGPT requests and their arrivals), policies, engine (building,
starting and warming a vLLM engine), clocks (wall and engine-step time),
driver (replaying a workload into an engine), runner (one policy's engine
through every workload), metrics (summaries and the issue's figures),
baselines (the bucket classifier and the ranker check), report (tables,
results.md, machine info) and plots.
"""

import os

from benchmarks.tiny_llama import set_vllm_env

# Before vLLM's import, which reads them.
set_vllm_env()
# vLLM logs dozens of lines per engine start; the benchmark's own lines are the ones to read.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

# The trace as other harnesses build it (benchmarks/sim replays the same requests).
from .trace import cut_prompt, decode_prompts, load_split, load_trace, poisson_arrivals, take  # noqa: E402

__all__ = ["cut_prompt", "decode_prompts", "load_split", "load_trace", "poisson_arrivals", "take"]
