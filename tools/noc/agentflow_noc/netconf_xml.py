"""The `agentflow-ran` YANG module's data as NETCONF XML: values as leaf text and back, the
edit-config payload of a change, and the cells and change record of a get-config reply."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from agentflow_noc import model

NS = "urn:agentflow:ran"


def to_text(value: Any) -> str:
    """A parameter value as the device's XML text (booleans as true/false)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def from_text(param: str, text: str | None) -> Any:
    """A leaf's text as the pack's value: "3.00" -> 3, "true" -> True, "primary" stays."""
    if text is None:
        return None
    kind = model.PARAMS.get(param, ("text",))[0]
    if kind == "bool":
        return text == "true"
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            return text  # not a number: the device will say so
        return int(number) if number.is_integer() else number
    return text


#: The leaves of `/ran/last-change` (the change record the pack writes).
RECORD = ("key", "change-id", "persist-id", "site", "param", "value", "previous", "state", "description")
# Characters XML 1.0 cannot carry at all (escaping does not help): the parser refuses the edit.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _leaf(name: str, value: Any) -> str:
    text = to_text(value)
    if _NOT_XML.search(text):
        raise ValueError(f"{name}: {text!r} holds a character XML cannot carry")
    return f"<{name}>{escape(text)}</{name}>"


def check_param(param: str) -> None:
    """A `ValueError` unless `param` is one of the module's cell leaves: element names come
    from the pack's list, never from an argument (a name is markup, not text)."""
    if param not in model.PARAMS:
        raise ValueError(f"unknown parameter {param!r}; parameters: {', '.join(model.PARAMS)}")


def cells_xml(cells: Mapping[str, Mapping[str, Any]], last_change: Mapping[str, Any] | None = None) -> str:
    """An edit-config `<config>` setting `cells` ({site: {param: value}}) and `last_change`; a
    `ValueError` for a parameter or record field the module does not have, or a text XML cannot carry."""
    for params in cells.values():
        for param in params:
            check_param(param)
    unknown = sorted(set(last_change or {}) - set(RECORD))
    if unknown:
        raise ValueError(f"unknown change record fields {unknown}; fields: {', '.join(RECORD)}")
    body = "".join(
        "<cell>" + _leaf("site", site) + "".join(_leaf(p, v) for p, v in params.items()) + "</cell>"
        for site, params in cells.items()
    )
    if last_change is not None:
        body += (
            "<last-change>" + "".join(_leaf(k, v) for k, v in last_change.items() if v is not None) + "</last-change>"
        )
    return f'<config xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><ran xmlns="{NS}">{body}</ran></config>'


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_ran(data_xml: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """({site: config}, last-change or None) of a get-config reply's `<data>` XML."""
    data = ElementTree.fromstring(data_xml.encode())
    ns = {"r": NS}
    cells: dict[str, dict[str, Any]] = {}
    for cell in data.iterfind(".//r:ran/r:cell", ns):
        site = cell.findtext("r:site", namespaces=ns)
        params = {_local(leaf.tag): leaf.text for leaf in cell if _local(leaf.tag) != "site"}
        cells[str(site)] = {p: from_text(p, t) for p, t in params.items()}
    found = data.find(".//r:ran/r:last-change", ns)
    last = None if found is None else {_local(leaf.tag): leaf.text for leaf in found}
    return cells, last
