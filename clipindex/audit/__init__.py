"""Label audit: which labelled images are most likely mislabeled (``clipindex audit``).

Owns: the out-of-fold ``signals`` (image probes, the captions' vote, prototype
distances), near-duplicate groups with conflicting labels (``duplicates``), the ranking
(``run``: :func:`audit_store`) and its files (``outputs``).
May import: floors 0-5 (``classifiers`` for the probes and prototypes, ``search.dedup``
for near-duplicates, ``store``). It sits between them and ``bench`` (which reads or runs
an audit for ``--drop-suspects``).
"""

from clipindex.audit.outputs import FILES, ISSUE_COLUMNS, OUTLIER_COLUMNS
from clipindex.audit.run import AuditResult, AuditSettings, audit_store

__all__ = ["FILES", "ISSUE_COLUMNS", "OUTLIER_COLUMNS", "AuditResult", "AuditSettings",
           "audit_store"]
