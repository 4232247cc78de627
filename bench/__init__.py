"""``make bench``: Sceau against OpenBao Transit on one machine, in one run (issue 9).

``python -m bench.run`` is the entry point; ``bench.loadgen`` is the load generator it
starts as a separate process pinned to CPU 1. Results go to ``bench/results/``.
"""
