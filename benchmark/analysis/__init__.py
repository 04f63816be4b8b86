"""Why Crocodile works: the paper's analysis tools (sections 2, 4.3, 4.4; figures 1, 2, 5, 6, 7).

* :mod:`.measures`: Information Abundance, memory-light singular values, the Diversity Index of eq. (1)-(3),
  covariance heatmaps (pure numpy).
* :mod:`.probe`: what is read from a model: expert outputs on fixed rows, embedding tables as views of the
  weights, training frequencies of their rows.
* :mod:`.epochs`: the ``record_ia`` run option: IA snapshots at every epoch end (figure 2).
* :mod:`.figures`: the PNGs; :mod:`.report`: a set of runs -> ``analysis.json`` + figures;
  :mod:`.command`: ``mdl-bench analyze``; :mod:`.html`: the figures as a section of the HTML leaderboard.
"""
