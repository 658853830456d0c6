"""compile_report() as a user reads it: a list of SiteRecord whose str() is an aligned table with a summary
line (format_report() gives the same text), emptied by reset_report() and by torch._dynamo.reset()."""
import sys
import types

import torch
import torch.nn.functional as F

import glacompiler
from glacompiler.compiler import report
from glacompiler.compiler.report import SiteRecord, format_report
from glacompiler.spec import AttentionSpec
from test_backend_patterns import D, HKV, HQ, sdpa_inputs

PREFILL = 20  # query tokens: more than the op takes, so the site is skipped with its shapes understood


def decode(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def causal_prefill(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def compile_decode_and_prefill():
    with torch.no_grad():
        torch.compile(decode, backend="gla")(*sdpa_inputs())
        torch.compile(causal_prefill, backend="gla")(*sdpa_inputs(query_len=PREFILL))


def test_table_of_a_rewritten_and_a_skipped_site():
    torch._dynamo.reset()
    glacompiler.reset_report()
    compile_decode_and_prefill()
    records = glacompiler.compile_report()
    assert [r.status for r in records] == ["rewritten", "skipped"] and isinstance(records[0], SiteRecord)
    text = str(records)
    assert text == format_report() == format_report(records)
    header, rewritten, skipped, summary = text.splitlines()
    assert header.split() == ["status", "kind", "heads", "q/kv", "dims", "q/k/v/rope", "dtype", "form", "mask",
                              "graph", "source", "reason"]
    assert rewritten.split()[:5] == ["rewritten", "gqa", f"{HQ}/{HKV}", f"{D}/{D}/{D}/0", "float32"]
    assert rewritten.split()[5].startswith("sdpa:") and "in decode" in rewritten
    assert skipped.split()[:5] == ["skipped", "gqa", f"{HQ}/{HKV}", f"{D}/{D}/{D}/0", "float32"]
    assert "in causal_prefill" in skipped and skipped.endswith(records[1].reason)
    assert f"query length {PREFILL} > 16" in records[1].reason
    assert [r.mask for r in records] == ["", ""]  # decode without a mask; a skipped site gets none
    for column, cells in (("kind", [r.kind for r in records]), ("form", [r.form for r in records]),
                          ("mask", ["-", "-"]), ("graph", [r.graph for r in records]),
                          ("source", [r.location for r in records])):
        start = header.index(column)  # every row starts each column where the header does
        assert all(row[start:].startswith(cell) and row[start - 2:start] == "  "
                   for row, cell in zip((rewritten, skipped), cells)), column
    assert skipped[header.index("reason"):] == records[1].reason
    assert records[0].location in rewritten and records[0].source not in rewritten  # no line of code in the table
    assert summary == "2 attention sites: 1 rewritten, 1 skipped"


def test_table_text():
    spec = AttentionSpec("gla", 16, 2, 64, 64, 64, 16, True, False, "bfloat16")
    records = [
        SiteRecord("gla", spec, "model.py:84 in decode: out = attend(q, c)", "rewritten", "", "decomposed softmax",
                   "graph 1", "lengths"),
        SiteRecord(None, None, "graph node softmax_3", "skipped", "the scores are also used by add_7",
                   "decomposed safe softmax", "graph 12"),
    ]
    assert format_report(records) == "\n".join([
        "status     kind  heads q/kv  dims q/k/v/rope  dtype     form                     mask     graph     "
        "source                 reason",
        "rewritten  gla   16/2        64/64/64/16      bfloat16  decomposed softmax       lengths  graph 1   "
        "model.py:84 in decode",
        "skipped    ?     -           -                -         decomposed safe softmax  -        graph 12  "
        "graph node softmax_3   the scores are also used by add_7",
        "2 attention sites: 1 rewritten, 1 skipped",
    ])
    assert format_report([]) == str(report.CompileReport()) == "no attention sites seen"


def test_reset_report_clears_the_records():
    torch._dynamo.reset()
    glacompiler.reset_report()
    compile_decode_and_prefill()
    assert len(glacompiler.compile_report()) == 2
    glacompiler.reset_report()
    assert glacompiler.compile_report() == [] and str(glacompiler.compile_report()) == "no attention sites seen"


def test_dynamo_reset_drops_the_records_of_the_compiles_it_threw_away():
    torch._dynamo.reset()
    glacompiler.reset_report()
    compile_decode_and_prefill()
    assert len(glacompiler.compile_report()) == 2
    torch._dynamo.reset()
    assert glacompiler.compile_report() == []
    with torch.no_grad():  # records do not pile up across resets: only this compile's site is reported
        torch.compile(decode, backend="gla")(*sdpa_inputs())
    (record,) = glacompiler.compile_report()
    assert record.status == "rewritten"
    assert str(glacompiler.compile_report()).splitlines()[-1] == "1 attention site: 1 rewritten, 0 skipped"


def test_without_dynamo_callbacks_records_stay_until_reset_report(monkeypatch):
    """Another torch without dynamo's callback handler: no crash, and only reset_report() clears."""
    monkeypatch.setitem(sys.modules, "torch._dynamo.callback", types.ModuleType("torch._dynamo.callback"))
    glacompiler.reset_report()
    record = SiteRecord(None, None, "graph node softmax", "skipped", "a reason", "decomposed softmax", "graph 0")
    report.add_records([record])
    torch._dynamo.reset()
    assert glacompiler.compile_report() == [record]
    glacompiler.reset_report()
    assert glacompiler.compile_report() == []


def test_skip_reason_says_where_and_what_would_fuse():
    """Decline.explain: the reason, the source line of the node the pass stopped at when it is not the site's
    own line, and what would let the site fuse."""
    from torch import fx

    from glacompiler.compiler.decline import Decline
    from glacompiler.compiler.report import source_location

    graph = fx.Graph()
    mask = graph.placeholder("mask")
    mask.meta["stack_trace"] = 'File "model.py", line 7, in make_mask\n    mask = build()\n'
    site = 'model.py:42 in forward: out = attend(q, k, v)'
    decline = Decline("the mask varies across heads", fix="one mask for all heads", node=mask)
    assert decline.explain(site, source_location) == (
        "the mask varies across heads (at model.py:7 in make_mask); to fuse: one mask for all heads")
    # The same line as the site's is not repeated; a node without a stack trace adds nothing.
    assert decline.explain('model.py:7 in make_mask: x', source_location) == (
        "the mask varies across heads; to fuse: one mask for all heads")
    mask.meta.pop("stack_trace")
    assert Decline("seen", node=mask).explain(site, source_location) == "seen"
