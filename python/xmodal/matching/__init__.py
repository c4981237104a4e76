"""Sparse k-NN cost graphs and exact min-cost assignment between point sets.

- :func:`knn_graph`: Euclidean distances of nearby pairs (radius and/or k nearest, both ways) as a
  ``scipy.sparse.csr_matrix``;
- :func:`linear_assignment`: exact one-to-one assignment on a dense or sparse matrix, optionally
  partial (an unmatched cost per row and column);
- :func:`cover_assignment`: exact many-to-one cover matching (larger set exactly once, smaller set
  at least once);
- :func:`match_points`: both in one call.

See ``docs/matching.md`` for the conventions and measured figures.
"""

from ._assignment import AssignmentResult, cover_assignment, linear_assignment
from ._knn import knn_graph
from ._match import match_points

__all__ = ["knn_graph", "linear_assignment", "cover_assignment", "match_points", "AssignmentResult"]
