"""Safe defaults: embedded clusters listen on loopback only; no animal id leaves its group.

* Every socket the embedded cluster opens (scheduler, dashboard, nannies, workers and their
  dashboards) listens on 127.0.0.1, read from the operating system (psutil), for
  ``bm.connect("local")``, the CLI's ``--cluster local`` and ``bonemet-dask demo``.
* :func:`~bonemet_dask.io.store.scan_group_path` turns an animal id into one path segment under
  its component, or refuses it: Hypothesis tries arbitrary text and integers.
"""

import ntpath
import posixpath

import dask
import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bonemet_dask as bm
from bonemet_dask.cluster import dashboard_on
from bonemet_dask.io.store import MAX_ID_LENGTH, scan_group_path
from bonemet_dask.naming import COMPONENTS, SIDES

LOOPBACK = {"127.0.0.1", "::1"}


def _listening() -> set[tuple[int, str, int]]:
    """``(pid, address, port)`` of every listening socket of this process and its children."""
    me = psutil.Process()
    found = set()
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:  # a child that just ended
            continue
        found |= {(process.pid, c.laddr.ip, c.laddr.port) for c in connections
                  if c.status == psutil.CONN_LISTEN}  # fmt: skip
    return found


def _assert_loopback_only(client, before: set) -> None:
    """The sockets opened since ``before`` (the cluster's) all listen on loopback."""
    opened = _listening() - before
    workers = client.scheduler_info()["workers"]
    # the scheduler and its dashboard, plus at least one socket per worker process
    assert len(opened) >= 2 + len(workers), opened
    assert {address for _, address, _ in opened} <= LOOPBACK, opened
    dashboard = client.scheduler_info()["services"]["dashboard"]  # the dashboard is on
    assert any(port == dashboard for _, _, port in opened), (dashboard, opened)


@pytest.mark.parametrize(
    ("dashboard_address", "settings"),
    [(None, {}), (":0", {}),
     (":0", {"bonemet.cluster.scheduler-host": None})],
    ids=["defaults", "bare-port", "null-config"],
)  # fmt: skip
def test_connect_local_listens_on_loopback_only(dashboard_address, settings):
    """With the package defaults (the dashboard on 127.0.0.1:8787, or the next free port when
    that one is taken), with a bare dashboard port (which distributed alone binds to 0.0.0.0)
    and with a null scheduler host in the config."""
    before = _listening()
    with (
        dask.config.set(settings),
        bm.connect("local", n_workers=1, dashboard_address=dashboard_address) as client,
    ):
        _assert_loopback_only(client, before)
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")


@pytest.mark.parametrize(
    ("address", "host", "bound"),
    [(":0", None, "127.0.0.1:0"), ("8787", None, "127.0.0.1:8787"), (8787, None, "127.0.0.1:8787"),
     (None, None, None), (":0", "10.1.2.3", "10.1.2.3:0"), (":0", "::1", "[::1]:0"),
     ("0.0.0.0:8787", None, "0.0.0.0:8787"), ("127.0.0.1:0", "10.1.2.3", "127.0.0.1:0")],
)  # fmt: skip
def test_a_bare_dashboard_port_gets_the_scheduler_host(address, host, bound):
    assert dashboard_on(address, host) == bound


def test_the_cli_embedded_cluster_listens_on_loopback_only():
    from bonemet_dask.cli import _client

    before = _listening()
    with _client("local:n_workers=1") as client:  # what --cluster local:n_workers=1 starts
        _assert_loopback_only(client, before)


def test_the_demo_cluster_listens_on_loopback_only(tmp_path, monkeypatch):
    """``bonemet-dask demo`` starts its cluster with the demo's own arguments; the test stops
    the demo once that cluster is up (the demo's pipeline is tested in test_cli.py)."""
    import contextlib

    from rich.console import Console

    from bonemet_dask import cluster
    from bonemet_dask.demo import run_demo

    class Started(Exception):
        pass

    real = cluster.connect
    checked = []

    def connect(*args, **kwargs):
        before = _listening()
        with real(*args, **kwargs) as client:
            _assert_loopback_only(client, before)
            checked.append((args, kwargs))
        raise Started

    monkeypatch.setattr(cluster, "connect", connect)
    with pytest.raises(Started):
        run_demo(tmp_path / "demo", size="tiny", mice=1, weeks=1, seed=0, workers=1,
                 console=Console(quiet=True), progress=None,
                 stage_progress=contextlib.nullcontext)  # fmt: skip
    assert checked == [(("local",), {"n_workers": 1})]


# ---------------------------------------------------------------- animal ids in group paths

_TRICKY = st.text(alphabet="./\\\x00:~ _-aZ8é\n", max_size=12)


@settings(max_examples=400, deadline=None)
@given(
    mouse=st.one_of(
        st.text(), _TRICKY, st.integers(), st.from_regex(r"[0-9]{1,6}", fullmatch=True)
    ),
    component=st.sampled_from(COMPONENTS),
    side=st.sampled_from(SIDES),
    week=st.integers(0, 200),
)
def test_no_animal_id_leads_outside_its_component(mouse, component, side, week):
    try:
        path = scan_group_path(component, mouse, side, week)
    except ValueError as err:
        assert f"mouse={mouse!r}" in str(err) and "rename the scan folder" in str(err)
        return
    segment = str(mouse)
    assert path.split("/") == [component, segment, side, f"week{week}"]  # the id, unchanged
    assert segment not in (".", "..") and ".." not in segment
    assert not set(segment) & set("/\\\x00: \n")
    for flavour in (posixpath, ntpath):  # joined under a store root on POSIX and on Windows
        root = flavour.join(flavour.sep, "store.zarr")
        inside = flavour.join(root, component) + flavour.sep
        assert flavour.normpath(flavour.join(root, path)).startswith(inside)


@pytest.mark.parametrize(
    "mouse",
    ["../x", "..", ".", "a/b", "/851", "a\\b", "a\x00b", "", " 851", "851 ", "851\n", "é851",
     "a..b", ".hidden", "-rf", "851.", "C:", "851 left tibia", "x" * (MAX_ID_LENGTH + 1), -5,
     True, 8.5, None],
)  # fmt: skip
def test_unsafe_animal_ids_are_refused_by_name(mouse):
    with pytest.raises(ValueError, match="mouse=") as err:
        scan_group_path("seg_ct", mouse, "left", 0)
    assert repr(mouse) in str(err.value)


@pytest.mark.parametrize(
    ("mouse", "segment"),
    [("851", "851"), (851, "851"), (np.int64(851), "851"), ("0851", "0851"),
     ("M-12_a.b", "M-12_a.b"), ("x" * MAX_ID_LENGTH, "x" * MAX_ID_LENGTH)],
)  # fmt: skip
def test_safe_animal_ids_are_kept_as_they_are(mouse, segment):
    assert scan_group_path("seg_ct", mouse, "left", 3) == f"seg_ct/{segment}/left/week3"
