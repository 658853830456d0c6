"""Decline: the pass-wide "this site is not ours" signal. Every stage raises it with the reason, which the
report shows; the site is then left to Inductor, never approximated."""
from __future__ import annotations


class Decline(Exception):
    """A site that is attention-shaped but not exactly what our op computes: the message is the reason.
    `spec` is filled in when the site's shapes were understood before the decline."""

    def __init__(self, reason: str, spec=None):
        super().__init__(reason)
        self.spec = spec
