"""Issue 12 section 5, as a guard: every Decline the pass can raise says what would let the site fuse. An AST
scan of glacompiler/compiler finds each construction; each must pass a `fix=` that is not empty (a string, an
f-string or a shared constant such as UNEXPECTED_GRAPH). Each one with a user-facing fix (not UNEXPECTED_GRAPH)
is listed in SITES, by module, function and the start of its reason, with the test that triggers it or
UNREACHABLE (argued in tests/test_skip_reasons.py's docstring): a new check fails here until it is either."""
import ast
import importlib
import pathlib
from collections import Counter

import glacompiler.compiler
from glacompiler.compiler import decline

COMPILER = pathlib.Path(glacompiler.compiler.__file__).parent


def decline_calls():
    """(file:line, the Call node) of every Decline(...) under glacompiler/compiler."""
    for path in sorted(COMPILER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Decline":
                yield f"{path.relative_to(COMPILER)}:{node.lineno}", node


def missing_fix(call: ast.Call) -> bool:
    fix = next((keyword.value for keyword in call.keywords if keyword.arg == "fix"), None)
    if fix is None:
        return True
    if isinstance(fix, ast.Constant):
        return not (isinstance(fix.value, str) and fix.value.strip())
    if isinstance(fix, ast.JoinedStr):
        return not fix.values
    if isinstance(fix, ast.Name):
        return not getattr(decline, fix.id, "").strip()
    return False  # another expression (a conditional, a call): checked when the tests reach it


def test_every_decline_says_what_would_let_it_fuse():
    calls = list(decline_calls())
    assert len(calls) > 100, "the scan found too few Decline constructions: has the package moved?"
    without = [where for where, call in calls if missing_fix(call)]
    assert not without, f"Decline(...) without a fix=: {without}"


def test_explain_names_the_goal():
    """A fused expanded MLA/GLA site's note says what would absorb it (tests/test_backend_report.py checks the
    rest of the form)."""
    declined = decline.Decline("V is not one product of the latent", fix="compute V as one linear map")
    assert declined.explain("model.py:7 in forward: x", locate=None, goal="absorb") == (
        "V is not one product of the latent; to absorb: compute V as one linear map")


UNREACHABLE = "no code that runs correctly in eager reaches it (tests/test_skip_reasons.py's docstring says why)"
REASON_PREFIX = 40

# module -> (function, reason's start, placeholders as {}) -> "test file::case or test" that triggers it
SITES = {
    'absorb/expansion.py': {
        ('split_parts', 'part of the key is never written (an emp'): UNREACHABLE,
        ('split_parts', 'a part of the key is written with a step'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
        ('split_parts', 'a part of the key is copied from a tenso'): UNREACHABLE,
        ('split_parts', 'a part of the concatenated key has a sym'):
            'test_absorb.py::test_symbolic_sizes_keep_the_expanded_form',
    },
    'absorb/latent.py': {
        ('linear_map', 'reasons[0]'): 'test_absorb.py::test_not_an_exact_expansion_stays_expanded',
        ('linear_map', 'the product computing the {} cannot be f'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
    },
    'absorb/locate.py': {
        ('compose_located', 'cannot follow which elements of {} are r'):
            'test_absorb.py::test_not_absorbed_note_names_the_line_it_stopped_at',
    },
    'absorb/plan.py': {
        ('_absorb', 'soft capping or ALiBi on a latent expans'):
            'test_absorb.py::test_softcapped_expansion_stays_expanded',
        ('_value_map', 'V is not one product of the latent'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
        ('_absorb', 'K is not a product of the latent (it is '):
            'test_absorb.py::test_not_an_exact_expansion_stays_expanded',
        ('_absorb', 'K is joined from {} products (one linear'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
        ('_absorb', 'K and V are maps of different latents'):
            'test_absorb.py::test_not_an_exact_expansion_stays_expanded',
        ('_absorb', 'K has more than one part besides the lat'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
        ('_rope_part', 'the rope key is read at an offset of its'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
        ('_rope_part', "K's part besides the latent map varies a"):
            'test_absorb.py::test_not_an_exact_expansion_stays_expanded',
        ('_rope_part', 'the rope key is broadcast along the batc'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
        ('_absorb', 'the {} is {}, the query {}'): 'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
        ('_validate', 'the absorbed form is unsupported by the '):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
    },
    'absorb/weights.py': {
        ('weight_view', 'the {} weight has a symbolic size'):
            'test_absorb.py::test_symbolic_sizes_keep_the_expanded_form',
        ('weight_view', 'the {} weight is read with a stride patt'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
        ('weight_view', 'the {} weight is read in runs that cross'):
            'test_absorb.py::test_not_absorbed_notes_say_what_would_absorb',
    },
    'find/sdpa.py': {
        ('read_sdpa', 'dropout_p={} is active'): 'test_skip_reasons.py::test_sdpa_dropout_on_cuda',
        ('read_sdpa', 'the softmax scale is not a constant'): UNREACHABLE,
        ('read_sdpa', '{} also has its logsumexp or other side '): 'test_skip_reasons.py::logsumexp_used',
    },
    'plan/extensions.py': {
        ('plan_extensions', 'float16 scores scaled by a tensor in {}:'):
            'test_backend_scale_tensors.py::test_float16_scores_scaled_in_float32_are_left_alone',
        ('per_head_plan', 'the {} vary along the {} dim, not per he'): 'test_skip_reasons.py::sinks_per_sequence',
        ('_slot_pieces', 'the {} do not line up with the scores'): 'test_skip_reasons.py::sinks_heads_regrouped',
        ('plan_extensions', 'soft capping or ALiBi on a latent (MLA/G'): 'test_skip_reasons.py::softcap_on_latent',
        ('_slot_pieces', 'the {} vary along part of a score dim'): 'test_skip_reasons.py::alibi_positions_restart',
        ('plan_extensions', 'ALiBi with several query tokens per sequ'): 'test_skip_reasons.py::alibi_two_tokens',
        ('plan_extensions', "ALiBi with sinks: the op's -slope * |que"): 'test_skip_reasons.py::alibi_with_sinks',
        ('plan_extensions', 'the ALiBi bias is not one slope per head'):
            'test_skip_reasons.py::alibi_positions_per_sequence',
    },
    'plan/match.py': {
        ('plan_softmax_site', 'the scores are also used by {} (an inter'): 'test_skip_reasons.py::scores_returned',
        ('_settle_main', 'cannot tell the latent score term from t'): 'test_skip_reasons.py::two_terms_per_head',
        ('_same_key_length', "SDPA's key and value lengths differ ({} "):
            'test_skip_reasons.py::key_value_lengths_differ',
        ('plan_sdpa_site', 'SDPA operands without a head dim'): UNREACHABLE,
        ('plan_sdpa_site', 'SDPA heads or head dim are symbolic'): 'test_skip_reasons.py::test_symbolic_sizes',
        ('plan_sdpa_site', 'SDPA query heads ({}) are not a multiple'): UNREACHABLE,
        ('plan_sdpa_site', 'the SDPA mask of shape {} does not broad'): UNREACHABLE,
        ('_check_owned', '{} {} is also used by {} (an intermediat'): 'test_skip_reasons.py::scaled_scores_returned',
    },
    'plan/site_plan.py': {
        ('choose_roles', 'query positions are spread over several '): 'test_skip_reasons.py::positions_in_two_dims',
        ('query_plan', "the {}'s head dim is strided"):
            'test_backend_layout.py::test_runs_with_a_gap_that_is_not_a_block_prefix_are_declined',
        ('head_dim_span', "the {}'s head dim shares axis {} of {} w"): 'test_skip_reasons.py::test_symbolic_sizes',
        ('cache_plan', "the {}'s head dim is not contiguous in m"): 'test_skip_reasons.py::key_not_contiguous',
        ('output_plan', 'the attention output does not hold every'): UNREACHABLE,
        ('make_plan', 'q, k, v dtypes {} are not one supported '): 'test_skip_reasons.py::float64',
        ('choose_roles', '{} q.k products feed the scores (at most'): 'test_skip_reasons.py::three_products',
        ('query_plan', 'the {} is broadcast along the {} dim'): 'test_skip_reasons.py::rope_query_broadcast',
        ('check_scales', 'the score terms are scaled differently'): 'test_skip_reasons.py::scaled_differently',
        ('make_plan', 'the {} is symbolic'): 'test_skip_reasons.py::test_symbolic_sizes',
        ('make_plan', 'the query length is symbolic'): 'test_skip_reasons.py::test_symbolic_sizes',
        ('make_plan', 'query length {} > {} (prefill): left to '): 'test_skip_reasons.py::prefill',
        ('_validate', 'unsupported by the op: {}'): 'test_skip_reasons.py::head_dim_unsupported',
        ('choose_roles', 'each score term has keys per head: neith'): 'test_skip_reasons.py::terms_with_own_heads',
        ('tensor_plan', 'the {} is read in runs that do not tile '): UNREACHABLE,
        ('make_plan', 'the mask varies along a batch that spans'): 'test_skip_reasons.py::latent_with_two_batch_dims',
        ('tensor_plan', 'the {} is read with a stride pattern the'): 'test_skip_reasons.py::every_other_key',
    },
    'trace/masks.py': {
        ('place', 'mask {} does not line up with the scores'): 'test_skip_reasons.py::bias_heads_regrouped',
        ('normalize', 'mask {} is a view that cannot be followe'): 'test_skip_reasons.py::mask_on_permuted_scores',
        ('place', 'mask {} varies along part of a score dim'): 'test_skip_reasons.py::bias_per_key_block',
        ('place', 'mask {} is read with a stride along one '): 'test_skip_reasons.py::mask_built_elsewhere',
    },
    'trace/operands.py': {
        ('walk_operand', 'an operand is scaled by a non-finite fac'): 'test_skip_reasons.py::infinite_scale',
    },
    'trace/score_mods.py': {
        ('visit_soft_cap', 'the scores pass through two tanh'): 'test_skip_reasons.py::two_tanh',
        ('visit_soft_cap', "the soft cap's output is scaled by a ten"): 'test_backend_scale_tensors.py::test_scale_tensors_the_op_cannot_take_are_reported',
        ('visit_soft_cap', "a mask is applied under the soft cap's t"): 'test_skip_reasons.py::mask_under_tanh',
        ('peel_sinks', 'the scores are concatenated with somethi'): 'test_skip_reasons.py::three_sink_columns',
        ('peel_sinks', 'the column joined to the scores is wider'): 'test_skip_reasons.py::sink_column_first',
        ('peel_sinks', "the sink column's probability is not dro"): 'test_skip_reasons.py::sink_column_kept',
        ('peel_sinks', 'the scores joined to the sinks are also '): 'test_skip_reasons.py::sinks_scores_used',
        ('peel_sinks', 'the sink column is not a floating tensor'): 'test_skip_reasons.py::integer_sinks',
        ('peel_sinks', 'the sink column does not broadcast to th'): UNREACHABLE,
        ('peel_sinks', 'the sink column is a view that cannot be'): UNREACHABLE,
    },
    'trace/score_side.py': {
        ('_visit', 'scores are computed by {} (not a scale, '): 'test_skip_reasons.py::fill_over_exp',
        ('_mask_layout', '{} {} of shape {} does not broadcast to '): UNREACHABLE,
        ('_visit_tensor_scale', 'the scores are scaled by two tensors'): 'test_backend_scale_tensors.py::test_scale_tensors_the_op_cannot_take_are_reported',
        ('_no_tensor_scale_above', 'a {} is applied to the scores before the'): 'test_backend_scale_tensors.py::test_scale_tensors_the_op_cannot_take_are_reported',
        ('walk_scores', 'a scale tensor multiplies one score term'): UNREACHABLE,
        ('walk_scores', 'no q.k product feeds the softmax'): UNREACHABLE,
        ('_visit_add', 'scores are combined by add with alpha !='): 'test_skip_reasons.py::add_with_alpha',
        ('_visit_add', 'neither side of an add on the scores com'): 'test_skip_reasons.py::fill_over_sum',
        ('_visit_add', 'a constant is added to the scores'): 'test_skip_reasons.py::constant_added',
        ('_visit_add', 'additive mask {} is not a floating tenso'): 'test_skip_reasons.py::integer_mask',
        ('_visit_fill', 'masked scores are replaced by {}, which '): 'test_skip_reasons.py::fill_zero',
        ('_visit_fill', 'the mask selecting masked scores is not '): UNREACHABLE,
        ('_visit', 'scores pass through {} that does not kee'): 'test_skip_reasons.py::bias_on_regrouped_scores',
        ('_visit', 'scores are cast from {} to {}'): 'test_skip_reasons.py::integer_scores',
        ('_visit', 'scores are multiplied by {} (the op need'): 'test_skip_reasons.py::negative_scale',
        ('_visit_add', 'an ALiBi bias is added under a soft cap,'): 'test_skip_reasons.py::alibi_twice',
        ('_visit_fill', 'a where() on the scores does not select '): 'test_skip_reasons.py::where_other_tensor',
    },
    'trace/slots.py': {
        ('_single', '{} is not one run of one axis'): 'test_skip_reasons.py::key_dim_broadcast',
        ('_term_from_layouts', 'the operands of a q.k product do not lin'): 'test_skip_reasons.py::qk_rows_regrouped',
        ('_term_from_layouts', 'the scores regroup the q.k product in a '): 'test_skip_reasons.py::scores_regrouped',
        ('_term_from_layouts', 'the q.k product sums over a broadcast di'): 'test_skip_reasons.py::key_half_broadcast',
        ('_split_cat_term', 'the q.k product reads part of a concaten'): 'test_skip_reasons.py::part_of_a_cat',
        ('_split_cat_term', "the query's head dim is strided"): 'test_skip_reasons.py::cat_query_strided',
        ('assign_roles', 'key positions are split over several run'): 'test_skip_reasons.py::scores_keys_permuted',
        ('_split_cat_term', 'a part of the concatenated key cannot be'): 'test_skip_reasons.py::cat_part_reordered',
        ('build_slots', 'the score terms index the scores differe'): 'test_skip_reasons.py::terms_keys_reordered',
        ('assign_roles', 'key positions also vary along dim {}: th'): 'test_skip_reasons.py::query_not_batched',
        ('assign_roles', 'the scores are broadcast along dim {}'): 'test_skip_reasons.py::scores_expanded',
        ('assign_roles', 'the softmax runs over dim {}, which also'): 'test_skip_reasons.py::softmax_over_heads',
        ('assign_roles', 'a score term is broadcast along the soft'): 'test_skip_reasons.py::rope_key_broadcast',
    },
    'trace/value_side.py': {
        ('follow_probabilities', 'the probabilities pass through {} before'): 'test_skip_reasons.py::dropout',
        ('analyze_values', 'the probabilities and V do not line up o'): 'test_skip_reasons.py::v_rows_regrouped',
        ('analyze_values', 'the value product does not sum the proba'): 'test_skip_reasons.py::heads_summed',
        ('analyze_values', 'the value dim of V is not one run of one'): 'test_skip_reasons.py::value_dim_in_two_runs',
        ('analyze_values', 'the value product reads only one index o'): 'test_skip_reasons.py::head_zero_only',
        ('values_of_product', "the value product's left operand is not "):
            'test_skip_reasons.py::probs_viewed_regrouped',
        ('values_of_product', 'the probabilities are regrouped in a way'): 'test_skip_reasons.py::probs_rows_regrouped',
        ('follow_probabilities', 'the attention probabilities ({}) are use'): 'test_skip_reasons.py::probs_returned',
        ('follow_probabilities', 'the probabilities are cast from {} to {}'):
            'test_skip_reasons.py::integer_probabilities',
        ('analyze_values', 'the value product splits a score dim dif'): 'test_skip_reasons.py::probs_regrouped',
        ('follow_probabilities', 'the probabilities are the right operand '): UNREACHABLE,
        ('analyze_values', 'V is not indexed by the same batch/KV-he'): 'test_skip_reasons.py::v_batch_broadcast',
        ('analyze_values', 'V varies along a query row, so rows do n'): 'test_skip_reasons.py::v_per_query',
    },
}


def _reason_template(reason: ast.expr) -> str:
    if isinstance(reason, ast.Constant):
        return str(reason.value)
    if isinstance(reason, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in reason.values)
    return ast.unparse(reason)


def user_facing_sites():
    """(module, function, reason's start) of every Decline(...) whose fix is not UNEXPECTED_GRAPH."""
    for path in sorted(COMPILER.rglob("*.py")):
        module = str(path.relative_to(COMPILER))
        functions = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)]
        for function in functions:
            inner = [f for f in ast.walk(function) if isinstance(f, ast.FunctionDef) and f is not function]
            nested = {id(node) for f in inner for node in ast.walk(f)}
            for node in ast.walk(function):
                if id(node) in nested or not isinstance(node, ast.Call) or not node.args:
                    continue
                if getattr(node.func, "id", getattr(node.func, "attr", None)) != "Decline":
                    continue
                fix = next((keyword.value for keyword in node.keywords if keyword.arg == "fix"), None)
                if isinstance(fix, ast.Name) and fix.id == "UNEXPECTED_GRAPH":
                    continue
                yield module, function.name, _reason_template(node.args[0])[:REASON_PREFIX]


def test_every_user_facing_check_is_triggered_or_argued_unreachable():
    found = Counter(user_facing_sites())
    assert len(found) > 90, "the scan found too few user-facing checks: has the package moved?"
    assert all(count == 1 for count in found.values()), [site for site, count in found.items() if count > 1]
    listed = {(module, *key): trigger for module, sites in SITES.items() for key, trigger in sites.items()}
    new = sorted(set(found) - set(listed))
    assert not new, (f"checks with a user-facing fix that no test is listed for: {new}; add a case that triggers "
                     "each to tests/test_skip_reasons.py (or argue it unreachable in its docstring) and list it in "
                     "SITES")
    gone = sorted(set(listed) - set(found))
    assert not gone, f"SITES lists checks the pass no longer has (or whose reason changed): {gone}"
    for site, trigger in listed.items():
        if trigger == UNREACHABLE:
            continue
        file, _, name = trigger.partition("::")
        tests = importlib.import_module(file.removesuffix(".py"))
        assert name in getattr(tests, "CASES", {}) or callable(getattr(tests, name, None)), (site, trigger)
