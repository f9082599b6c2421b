"""The hyperparameter validation search: which point of a method's grid to merge with.

The study tunes each method's coefficients and sparsity on validation surrogates (Appendix B.2,
Table 7) and finds that validation, not the merge, dominates the cost of TIES and DARE (30 grid
points each). The parts of one search, each behind its own interface:

* :mod:`~mergebench.search.strategies`: which points are scored on which items (the full grid,
  or successive halving); a strategy sees only an :class:`~mergebench.search.strategies.Objective`.
* :mod:`~mergebench.search.objective`: what a point scores, merged in memory and evaluated on
  item ranges of the validation surrogates, relative to the domain experts.
* :mod:`~mergebench.search.grid_merge`: many points of one method merged on inputs read once.
* :mod:`~mergebench.search.shared_decoding`: many ``base + λ·Δ`` points evaluated together.
"""
