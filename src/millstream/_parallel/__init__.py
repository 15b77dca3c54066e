"""Local parallelism: a job on N worker processes of this machine (issue 11, section 2; first slice).

The physical plan (:mod:`millstream._physical`, compiled with ``gather_sinks``) says which operator
instances run on which worker. This process is **worker 0**; workers 1 .. N-1 are processes forked
from it (or from a ``forkserver`` when it runs threads). A source of several logical splits
(``Source.logical_splits``: memory, the generator and Nexmark with ``splits=``) is read by every
worker, each its range of splits, and the stateless steps after it run there too; a source of one
split is read on worker 0. Every sink is written on worker 0. ``forward`` edges stay inside a process; ``hash`` edges
send each record to the worker owning its key group, ``global`` edges to worker 0, through
:mod:`._exchange` (bounded channels of pickled chunks, watermarks, end of input).

::

    every worker w                                          every worker w'
    source part w -> chain -> ExchangeOut ==hash==> ExchangeIn -> keyed instances -> ExchangeOut
                                                                                       ||
    worker 0: sinks <- ExchangeIn <==================global============================

With a checkpoint directory (at-least-once, exactly-once), the workers take aligned checkpoints
(:mod:`._checkpoints`: every worker writes its part, worker 0 completes the checkpoint once all are
durable), and a job resumes from its latest checkpoint at any parallelism (:mod:`._rescale`: each
worker gets the key groups of its range and the positions of its splits).

With ``engine="ray"`` (:mod:`._ray`), workers 1 .. N-1 are Ray actors instead of processes: the same
physical plan, worker code and exchange, over another :class:`~._exchange.Transport` (actor calls
instead of pipes); this process is still worker 0.

What is not here yet: at-most-once, savepoints, state on disk.
:func:`check_config` refuses those with a ConfigError naming the fix.
"""

from ._runner import check_config, run_parallel

__all__ = ["check_config", "run_parallel"]
