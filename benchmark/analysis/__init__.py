"""Why Crocodile works: the paper's analysis tools (sections 2, 4.3, 4.4; figures 1, 2, 5, 6, 7), on stored runs.

The quantities themselves (IA, DI, spectra, covariances, the model probes) are in :mod:`..measure`, below the
runner; this package turns a set of runs into reports and figures:

* :mod:`.report`: a set of runs -> ``analysis.json`` + figures; :mod:`.figures`: the PNGs;
* :mod:`.store_bridge`: the runs of the results store as :class:`~.report.RunRef`;
* :mod:`.command`: ``mdl-bench analyze``; :mod:`.html`: the figures as a section of the HTML leaderboard.
"""
