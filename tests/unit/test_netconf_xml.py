"""The NETCONF pack's XML (`agentflow_noc.netconf_xml`): a model's arguments become leaf text
only (never elements), and a device's text comes back as the pack's values."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from agentflow.errors import ToolError
from agentflow_noc.netconf import Device, DeviceSettings
from agentflow_noc.netconf_xml import NS, cells_xml, from_text, parse_ran, to_text


def test_arguments_are_text_never_markup() -> None:
    """A hostile site or value (closing the leaf, opening another) stays the text of its leaf:
    the edit sets nothing but what it names, and the device validates the text."""
    site, value = "CS-101</site><txPower>46</txPower><site>CS-101", "3</hoA3Offset><prbCap>10</prbCap><hoA3Offset>3"
    root = ElementTree.fromstring(cells_xml({site: {"hoA3Offset": value}}, {"key": "k<1>&"}))
    cell = root.find(f"{{{NS}}}ran/{{{NS}}}cell")
    assert cell is not None
    assert [(leaf.tag.rpartition("}")[2], leaf.text) for leaf in cell] == [("site", site), ("hoA3Offset", value)]
    assert root.findtext(f"{{{NS}}}ran/{{{NS}}}last-change/{{{NS}}}key") == "k<1>&"


def test_values_round_trip_between_the_pack_and_the_device() -> None:
    """Booleans are YANG's true/false; decimal64 text ("3.00") is the model's 3; text the
    device would refuse stays text (the device says why); None leaves are left out."""
    assert [to_text(v) for v in (True, False, 3, 2.5, "secondary")] == ["true", "false", "3", "2.5", "secondary"]
    assert from_text("hoA3Offset", "3.00") == 3 and from_text("txPower", "40.50") == 40.5
    assert from_text("loadBalancing", "true") is True and from_text("backhaul_link", "primary") == "primary"
    assert from_text("prbCap", "lots") == "lots" and from_text("prbCap", None) is None
    assert "persist-id" not in cells_xml({}, {"key": "k", "persist-id": None})


def test_a_get_config_reply_reads_as_cells_and_the_change_record() -> None:
    reply = (
        '<?xml version="1.0" encoding="UTF-8"?><data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
        f'<ran xmlns="{NS}"><cell><site>CS-101</site><hoA3Offset>8.00</hoA3Offset>'
        "<loadBalancing>false</loadBalancing></cell><last-change><key>run:5</key><state>pending</state>"
        "</last-change></ran></data>"
    )
    cells, last = parse_ran(reply)
    assert cells == {"CS-101": {"hoA3Offset": 8, "loadBalancing": False}}
    assert last == {"key": "run:5", "state": "pending"}
    assert parse_ran('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>') == ({}, None)


def test_names_are_never_taken_from_arguments_and_unsayable_text_is_refused() -> None:
    """A parameter is an element name: one the module does not have (markup in it) is refused,
    as is a record field the pack does not write, or a value with a character XML 1.0 cannot
    carry (the XML parser would fail with an untyped error); the device API refuses them as a
    ToolError that is not retried, before it opens any session (port 9: nothing listens)."""
    with pytest.raises(ValueError, match="unknown parameter"):
        cells_xml({"CS-101": {"hoA3Offset><txPower>46</txPower><x": 1}})
    with pytest.raises(ValueError, match="unknown change record"):
        cells_xml({}, {"key": "k", "state><x/><y": "pending"})
    with pytest.raises(ValueError, match="XML cannot carry"):
        cells_xml({"CS-101\x00": {"hoA3Offset": 3}})
    device = Device(DeviceSettings(host="127.0.0.1", port=9, user="noc", timeout=2))
    for param, value in [("bogus/><x", 3), ("hoA3Offset", "3\x1b[2J")]:
        for call in (device.stage, lambda s, p, v: device.apply(s, p, v, key="k")):
            with pytest.raises(ToolError, match="not sent to the device") as refused:
                call("CS-101", param, value)
            assert not refused.value.retryable
