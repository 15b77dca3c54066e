"""Local parallelism: a job on N worker processes of this machine (issue 11, section 2; first slice).

The physical plan (:mod:`millstream._physical`, compiled with ``gather_sinks``) says which operator
instances run on which worker. This process is **worker 0**: it reads every source and writes every
sink, as the plan puts them there, and runs its share of the keyed instances; workers 1 .. N-1 are
processes forked from a ``forkserver`` (never from this process, which may run threads) and run
theirs. ``forward`` edges stay inside a process; ``hash`` edges send each record to the worker
owning its key group, ``global`` edges to worker 0, through :mod:`._exchange` (bounded channels of
pickled chunks, watermarks, end of input).

::

    worker 0 (this process)                             worker 1 .. N-1
    sources -> chains -> ExchangeOut ==hash==> ExchangeIn -> keyed instances -> ExchangeOut
                         keyed instances  <==hash==                               ||
    sinks  <- ExchangeIn <================global===================================

What is not here yet: micro-batch and batch mode, checkpoints (guarantee ``"none"`` only), state on
disk, sources split across workers. :func:`check_config` refuses those with a ConfigError naming
the fix.
"""

from ._runner import check_config, run_parallel

__all__ = ["check_config", "run_parallel"]
