"""The call signatures the documentation quotes match the code.

Every inline code span of the form ``name(...)`` in the documents below whose ``name`` is an xmodal
callable is checked against ``inspect.signature`` of the real object:

* a *signature* (the span lists parameters: names, ``name=literal``, ``*``, ``*args``, ``**kwargs``,
  ``"a"|"b"`` alternatives whose first is the default, a trailing ``...`` for "more follow", and its
  first name is the real first parameter): every documented parameter exists, in the documented
  order, of the documented kind (keyword-only after ``*``), with the documented default; without a
  trailing ``...`` no real parameter may be missing;
* a *call* (anything else that parses: ``cpd(..., xtol=)``, ``register_cells(transform="rigid")``,
  ``segment(raw, memory_voxels=2 * 512²)``): the named keywords exist and the number of positional
  arguments fits.

A span whose argument text is not a parameter list is read as a call, so it is still checked.
Fenced ``python`` blocks are checked as calls too (via ``ast``). A bare name that is neither an
xmodal callable nor listed in ``NOT_XMODAL`` fails (a renamed function is caught), as does an
``xmodal.``-prefixed name that does not exist; private names (``xmodal._cuda...``) and other
objects' methods (``viewer.open``) are not checked. Spans that would be misread are listed with
the reason: ``CALLS`` (parameter-like example calls) and ``UNPARSED``; stale entries fail.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import math
import pathlib
import re
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")) + [
    "README.md",
    "python/xmodal/models/README.md",
    "benchmarks/README.md",
]
NAMESPACES = (
    "xmodal",
    "xmodal.registration",
    "xmodal.matching",
    "xmodal.segmentation",
    "xmodal.inference",
    "xmodal.pipelines",
    "xmodal.atlas",
    "xmodal.metrics",
    "xmodal.io",
    "xmodal.models",
)
# module aliases the documents' examples import (``import xmodal.atlas as xa``)
ALIASES = {"xmodal": "xmodal", "xa": "xmodal.atlas", "M": "xmodal.metrics"}
# functions of internal modules that the design notes quote by bare name
DOCUMENTED_INTERNAL = {
    "gauss_transform": "xmodal.registration._fast_estep",
    "grid_error_bound": "xmodal.registration._fast_estep",
    "fast_estep": "xmodal.registration._fast_estep",
    "voxel_subsample": "xmodal.registration._fast_estep",
    "select_model": "xmodal.registration.selection",
    "heldout_matching_cost": "xmodal.registration.selection",
    "elastix_register": "xmodal.pipelines.elastix",
}
# bare names in code spans that are not xmodal callables: formulas, methods of returned objects,
# other libraries' functions, callbacks the user writes
NOT_XMODAL = {
    # mathematics in formulas
    "sqrt", "sum", "min", "max", "exp", "log", "ceil", "clip", "prod", "H", "BD", "u",
    # methods of results and transforms (``res.inverse()``, ``region.contains(y)``, ...)
    "inverse", "contains", "mahalanobis2", "as_dict", "eliminate_zeros", "sum_duplicates",
    # scipy's constructors (docs/matching.md: building a cost matrix)
    "csr_matrix",
    # a callback signature the user supplies (docs/cpd.md)
    "callback",
    # another library's function (docs/mws.md: the NIfTy / affogato peer)
    "compute_mws_segmentation",
    # a function of the evaluation scripts (scripts/evaluate_em_model.py), not of the package
    "read_vnc",
}
# spans the parser does not handle, with the reason (file, span text) -> reason
# (none at present: the forms that were, ``voxel_subsample(points, n | voxel=)`` and
# ``superpixel_agglomeration(boundaries | affinities+offsets, ...)``, were rewritten as signatures)
UNPARSED: dict[tuple[str, str], str] = {}
# spans that look like a parameter list but are calls with example values (file, span) -> reason
CALLS = {
    ("docs/inference.md", "xmodal.models.em.predict_em_affinities(model, x, tta=True)"):
        "an example call: tta is off by default, as the sentence says",
    ("docs/segmentation_graph.md", "segment(raw)"): "an example call with the defaults",
    ("docs/metrics.md", "variation_of_information(gt, seg)"):
        "skimage's argument order, quoted in the comparison with skimage",
    ("docs/mws.md", "mutex_watershed(a, offsets)"): "an example call (the peer comparison)",
    ("docs/metrics.md", "xmodal.pipelines.compare_segmentation_methods(raw, gt)"):
        "an example call with the defaults",
    ("docs/segmentation_graph.md", "edge_features(rag, labels, boundaries)"):
        "an example call (boundary-map input; the affinity input is the next span)",
    ("docs/segmentation_graph.md", "load_em_affinity_unet(path)"): "an example call with a checkpoint's path",
    ("python/xmodal/models/README.md", "load_em_affinity_unet(path)"): "an example call with a checkpoint's path",
}

_SPAN = re.compile(r"`([^`]+)`")
_CALL = re.compile(r"\s*([A-Za-z_][\w.]*)\s*\((.*)\)\s*$", re.S)
_IDENT = re.compile(r"[A-Za-z_]\w*$")
_NAMED_CONSTANTS = {"inf": math.inf, "np.inf": math.inf, "math.inf": math.inf, "np.e": math.e}


@dataclasses.dataclass
class Span:
    doc: str
    line: int
    text: str
    name: str
    args: str


def _strip_fences(text: str) -> str:
    """Blank out fenced code blocks (keeping line numbers)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text,
                  flags=re.S | re.M)


def _spans(doc: str) -> list[Span]:
    text = _strip_fences((ROOT / doc).read_text())
    out = []
    for m in _SPAN.finditer(text):
        raw = m.group(1)
        if "\n\n" in raw:  # not one span: an unmatched backtick
            continue
        call = _CALL.match(raw)
        if call:
            line = text.count("\n", 0, m.start()) + 1
            out.append(Span(doc, line, " ".join(raw.split()), call.group(1), call.group(2)))
    return out


def _python_blocks(doc: str) -> list[tuple[int, str]]:
    text = (ROOT / doc).read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


def _import(module: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _resolve_dotted(module: str, attrs: list[str]):
    """``xmodal.models.em.predict_em_affinities``: attributes first (``xmodal.pipelines.segment`` is
    the function, not the module of that name), a submodule where no attribute has the name."""
    parts = module.split(".") + attrs
    obj = _import(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = _import(".".join(parts[:i]))
        except ImportError:
            return None
    return obj


def resolve(name: str) -> list:
    """The xmodal objects ``name`` may mean; [] when it is not an xmodal callable."""
    parts = name.split(".")
    if any(p.startswith("_") for p in parts):
        return []  # private names (``xmodal._cuda.knn_graph``): not user API
    if len(parts) > 1:
        if parts[0] not in ALIASES:
            return []  # another object's method or another library (``viewer.open``, ``np.unique``)
        obj = _resolve_dotted(ALIASES[parts[0]], parts[1:])
        if obj is None:
            raise LookupError(f"{name} does not exist")
        return [obj] if callable(obj) and not inspect.ismodule(obj) else []
    found = []
    for ns in NAMESPACES:
        obj = getattr(_import(ns), name, None)
        if callable(obj) and not inspect.ismodule(obj) and all(obj is not f for f in found):
            found.append(obj)
    if not found and name in DOCUMENTED_INTERNAL:
        found.append(getattr(_import(DOCUMENTED_INTERNAL[name]), name))
    return found


def _split_args(s: str) -> list[str]:
    """Split at top-level commas (outside brackets and quotes)."""
    out, depth, quote, cur = [], 0, None, []
    for ch in s:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    tail = "".join(cur).strip()
    if tail or out:
        out.append(tail)
    return out


class NotLiteral(ValueError):
    pass


def _literal(text: str):
    """A documented default: a Python literal, ``inf``, or ``"a"|"b"`` (the first is the default)."""
    text = text.strip()
    alternatives = [a.strip() for a in re.split(r"\|(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", text)]
    first = alternatives[0]
    if first in _NAMED_CONSTANTS:
        return _NAMED_CONSTANTS[first]
    try:
        value = ast.literal_eval(first)
    except (ValueError, SyntaxError) as exc:
        raise NotLiteral(text) from exc
    if value is Ellipsis:  # ``preset=...``: some value, not a default
        raise NotLiteral(text)
    return value


@dataclasses.dataclass
class DocParam:
    name: str
    kind: str  # "positional", "keyword", "var_positional", "var_keyword"
    default: object = inspect.Parameter.empty
    value_text: str | None = None


def parse_params(args: str) -> tuple[list[DocParam], bool, bool] | None:
    """The parameters of a documented signature, whether it ends with ``...`` and whether it has a
    marker only signatures have (``*``, ``*args``, ``**kwargs``, the trailing ``...``); None when
    the text is not a parameter list (then it is read as a call)."""
    items = _split_args(args)
    if not items:
        return [], False, False
    more = items[-1] == "..."
    if more:
        items = items[:-1]
    params, keyword_only, marked = [], False, more
    for item in items:
        if item.startswith("*"):
            marked = True
        if item == "*":
            keyword_only = True
        elif item.startswith("**") and _IDENT.match(item[2:]):
            params.append(DocParam(item[2:], "var_keyword"))
        elif item.startswith("*") and _IDENT.match(item[1:]):
            params.append(DocParam(item[1:], "var_positional"))
            keyword_only = True
        elif _IDENT.match(item):
            params.append(DocParam(item, "keyword" if keyword_only else "positional"))
        elif "=" in item and _IDENT.match(item.split("=", 1)[0].strip()):
            name, value = (t.strip() for t in item.split("=", 1))
            try:
                default = _literal(value)
            except NotLiteral:
                return None
            params.append(DocParam(name, "keyword" if keyword_only else "positional", default, value))
        else:
            return None
    return params, more, marked


def _kind(p: inspect.Parameter) -> str:
    return {
        p.POSITIONAL_ONLY: "positional",
        p.POSITIONAL_OR_KEYWORD: "positional",
        p.KEYWORD_ONLY: "keyword",
        p.VAR_POSITIONAL: "var_positional",
        p.VAR_KEYWORD: "var_keyword",
    }[p.kind]


def _same_default(doc, real) -> bool:
    if real is inspect.Parameter.empty or doc is inspect.Parameter.empty:
        return real is doc
    if type(doc) in (int, float) and type(real) in (int, float):
        return doc == real or (math.isinf(doc) and math.isinf(real) and doc == real)
    return type(doc) is type(real) and doc == real


def check_signature(obj, params: list[DocParam], more: bool, marked: bool = True) -> list[str]:
    """Mismatches between a documented parameter list and the real signature. Private parameters
    (``_name``) need no documentation; ``*args`` / ``**kwargs`` match whatever the code calls them."""
    real = [p for p in inspect.signature(obj).parameters.values() if not p.name.startswith("_")]
    by_name = {p.name: p for p in real}
    for p in real:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            by_name.setdefault(_kind(p), p)
    errors, last = [], -1
    for d in params:
        r = by_name.get(d.kind if d.kind.startswith("var_") else d.name)
        if r is None:
            errors.append(f"no parameter {d.name!r}")
            continue
        i = real.index(r)
        if i < last:
            errors.append(f"{d.name!r} is out of order")
        last = max(last, i)
        if _kind(r) != d.kind:
            errors.append(f"{d.name!r} is {_kind(r)} in the code, {d.kind} in the doc")
        if d.kind in ("positional", "keyword"):
            if d.default is inspect.Parameter.empty and r.default is not inspect.Parameter.empty:
                if dataclasses.is_dataclass(obj):  # a result's fields: names and order suffice
                    continue
                errors.append(f"{d.name!r} has default {r.default!r} in the code, none in the doc")
            elif not _same_default(d.default, r.default):
                shown = "none" if r.default is inspect.Parameter.empty else repr(r.default)
                errors.append(f"{d.name!r} defaults to {shown} in the code, {d.value_text} in the doc")
    if not more:
        documented = {d.name for d in params} | {d.kind for d in params if d.kind.startswith("var_")}
        missing = [p.name for p in real if p.name not in documented and _kind(p) not in documented]
        if missing:
            errors.append(f"parameters not documented (end the list with '...' if on purpose): {missing}")
    return errors


def check_call(obj, positional: int, keywords: list[str]) -> list[str]:
    """Whether a call with that many positional arguments and these keywords binds."""
    real = list(inspect.signature(obj).parameters.values())
    errors = []
    accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in real)
    names = {p.name for p in real if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for k in keywords:
        if k not in names and not accepts_kwargs:
            errors.append(f"no keyword parameter {k!r}")
    if not any(p.kind == p.VAR_POSITIONAL for p in real):
        n_pos = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in real)
        if positional > n_pos:
            errors.append(f"{positional} positional arguments, the code takes at most {n_pos}")
    return errors


def _call_parts(args: str) -> tuple[int, list[str]] | None:
    """Positional count and keyword names of a documented call (``...`` entries are ignored)."""
    positional, keywords = 0, []
    for item in _split_args(args):
        if item in ("...", "") or item.startswith("*"):
            continue
        m = re.match(r"([A-Za-z_]\w*)\s*=(?!=)", item)
        if m:
            keywords.append(m.group(1))
        else:
            positional += 1
    return positional, keywords


def _all_spans() -> list[Span]:
    return [s for doc in DOCS for s in _spans(doc)]


SPANS = _all_spans()


def _check_span(s: Span) -> tuple[str, list[str]]:
    """('signature' | 'call' | 'unparsed' | 'not xmodal', errors)."""
    key = (s.doc, s.text)
    if key in UNPARSED:
        return "unparsed", []
    try:
        objs = resolve(s.name)
    except LookupError as exc:
        return "not xmodal", [str(exc)]
    if not objs:
        if "." in s.name or s.name in NOT_XMODAL:
            return "not xmodal", []
        return "not xmodal", [f"{s.name!r} is not an xmodal callable (add it to NOT_XMODAL if "
                              "it is not meant to be one)"]
    parsed = parse_params(s.args) if key not in CALLS else None
    results = []
    for obj in objs:
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            results.append(("call", [f"no signature for {obj!r}"]))
            continue
        first = next(iter(sig.parameters), None)
        if parsed is not None and parsed[0] and (parsed[2] or parsed[0][0].name == first):
            results.append(("signature", check_signature(obj, *parsed)))
        else:
            pos, kws = _call_parts(s.args)
            results.append(("call", check_call(obj, pos, kws)))
    for mode, errors in results:  # one object it fits is enough (a name exported twice)
        if not errors:
            return mode, []
    return min(results, key=lambda r: len(r[1]))


@pytest.mark.parametrize("span", SPANS, ids=[f"{s.doc}:{s.line}:{s.name}" for s in SPANS])
def test_documented_signature_matches_code(span):
    mode, errors = _check_span(span)
    assert not errors, f"{span.doc}:{span.line}: `{span.text}` ({mode}): " + "; ".join(errors)


def test_signatures_are_checked():
    """The parser reads the main API tables as signatures (not all as calls)."""
    modes = {}
    for s in SPANS:
        modes.setdefault((s.doc, s.name), set()).add(_check_span(s)[0])
    for doc, name in [("docs/cpd.md", "cpd"), ("docs/cpd.md", "cpd_coarse_to_fine"),
                      ("docs/matching.md", "match_points"), ("docs/mws.md", "mutex_watershed"),
                      ("docs/inference.md", "predict_tiled"), ("docs/metrics.md", "fit_rigid")]:
        assert "signature" in modes.get((doc, name), ()), (doc, name, modes.get((doc, name)))


def test_exception_lists_are_current():
    present = {(s.doc, s.text) for s in SPANS}
    stale = [k for k in list(UNPARSED) + list(CALLS) if k not in present]
    assert not stale, f"listed spans no longer in the documents: {stale}"
    names = {s.name for s in SPANS}
    assert not sorted(NOT_XMODAL - names), f"NOT_XMODAL names no span uses: {sorted(NOT_XMODAL - names)}"


def _block_calls(code: str):
    """(line, dotted name, positional count, keywords) of the calls in a python block whose
    function is imported from xmodal in that block."""
    tree = ast.parse(code)
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "xmodal":
                    names[a.asname or a.name.split(".")[0]] = a.name if a.asname else "xmodal"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xmodal"):
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts, f = [], node.func
        while isinstance(f, ast.Attribute):
            parts.append(f.attr)
            f = f.value
        if not isinstance(f, ast.Name) or f.id not in names:
            continue
        dotted = ".".join([names[f.id]] + parts[::-1])
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        yield node.lineno, dotted, len(node.args), [k.arg for k in node.keywords]


BLOCK_CALLS = [(doc, start + line - 1, name, pos, kws)
               for doc in DOCS for start, code in _python_blocks(doc)
               for line, name, pos, kws in _block_calls(code)]


@pytest.mark.parametrize("call", BLOCK_CALLS, ids=[f"{c[0]}:{c[1]}:{c[2]}" for c in BLOCK_CALLS])
def test_example_calls_bind(call):
    doc, line, name, pos, kws = call
    module, _, attr = name.partition(".")
    obj = _resolve_dotted(module, attr.split(".")) if attr else None
    assert obj is not None, f"{doc}:{line}: {name} does not exist"
    if inspect.isclass(obj) or not callable(obj) or inspect.ismodule(obj):
        return
    try:
        inspect.signature(obj)
    except (TypeError, ValueError):
        return
    errors = check_call(obj, pos, kws)
    assert not errors, f"{doc}:{line}: {name}: " + "; ".join(errors)


def test_parser():
    params, more, marked = parse_params('a, b, *, t="rigid"|"affine", w=0.0, c=inf, **kw')
    assert [p.name for p in params] == ["a", "b", "t", "w", "c", "kw"] and not more
    assert params[2].default == "rigid" and params[2].kind == "keyword" and params[4].default == math.inf
    assert marked and params[5].kind == "var_keyword"
    assert parse_params("a, ...")[1] and parse_params("a, x=F") is None
    assert parse_params("a, x=...") is None and not parse_params("a, x=1")[2]
    assert parse_params('x, k="a|b"')[0][1].default == "a|b"

    def f(a, b, *, t="rigid", w=0.0, **kw):
        pass

    assert not check_signature(f, *parse_params('a, b, *, t="rigid"|"affine", w=0.0, **kw'))
    assert check_signature(f, *parse_params("a, b, *, t='rigid'"))  # w and kw missing
    assert not check_signature(f, *parse_params("a, b, *, t='rigid', w=0.0, **options"))
    assert not check_signature(f, *parse_params("a, b, *, t='rigid', ..."))
    assert check_signature(f, *parse_params("a, b, *, w=0.0, t='rigid', ..."))  # order
    assert check_signature(f, *parse_params("a, b, *, t='affine', ..."))  # default
    assert check_signature(f, *parse_params("a, b, t='rigid', ..."))  # kind
    assert check_signature(f, *parse_params("a, b, *, s=1, ..."))  # name
    assert check_call(f, 3, []) and not check_call(f, 2, ["anything"])
