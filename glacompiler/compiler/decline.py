"""Decline: the pass-wide "this site is not ours" signal. Every stage raises it with the reason, which the
report shows; the site is then left to Inductor, never approximated.

A reason says what the pass saw; `fix`, where one is known, says what would let the site fuse; `node`, the
graph node the pass stopped at, gives the source line when it is not the site's own line (a mask built in
another function, a cache written elsewhere)."""
from __future__ import annotations

# The fix for a decline that user code should not be able to reach (an invariant of the graphs dynamo and AOT
# produce): there is nothing to change in the model, but the pass would like to hear of it.
UNEXPECTED_GRAPH = ("nothing in the model: the pass did not expect this graph here; please report it with this line "
                    "and the model")


class Decline(Exception):
    """A site that is attention-shaped but not exactly what our op computes: the message is the reason.
    `spec` is filled in when the site's shapes were understood before the decline."""

    def __init__(self, reason: str, spec=None, fix: str = "", node=None):
        super().__init__(reason)
        self.spec = spec
        self.fix = fix
        self.node = node

    def explain(self, site_source: str, locate, goal: str = "fuse") -> str:
        """The reason as the report shows it: what was seen, where when not at the site's own line (`locate`
        turns a node into its source line), and what would let it `goal` (fuse; absorb, for a fused site that
        stays in its expanded form)."""
        text = str(self)
        if self.node is not None and self.node.meta.get("stack_trace"):
            where = locate(self.node)
            if where.split(": ", 1)[0] != site_source.split(": ", 1)[0]:
                text += f" (at {where.split(': ', 1)[0]})"
        if self.fix:
            text += f"; to {goal}: {self.fix}"
        return text
