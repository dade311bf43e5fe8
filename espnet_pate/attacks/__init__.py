"""Privacy audits of released models (stage 8): membership inference and model inversion.

Everything here reads sensitive data and answers questions about it: its outputs are operator diagnostics, never
released claims (they go to ``exp/audit/``, apart from the released privacy figures).
"""
