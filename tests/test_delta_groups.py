"""Deleted, restored and re-created groups: InMemoryDirectory keeps the change log Graph gives (API §11).

Graph's ``groups/delta`` reports a deleted group as ``{"id", "@removed":
{"reason": "changed" | "deleted"}}``, its memberships ending with it; a group
restored (or created again under the same id) is listed again with its whole
direct membership, ``members@delta`` left out when it has none. The fake
Graph serves that; ``InMemoryDirectory`` must say the same, so an incremental
run after any of it ends where a full run ends.
"""

from __future__ import annotations

from typing import Any

import pytest

from calm_azure_sync import DirectoryGroup, InMemoryDirectory, InMemoryUserStore
from calm_azure_sync.directory.delta import DirectoryDelta
from calm_azure_sync.incremental import apply_delta, snapshot_members
from calm_azure_sync.testing.fake_graph import FakeGraphServer

from .graph_helpers import directory_for, user
from .helpers import SYSTEM, synced_access_of
from .test_incremental import CONFIG, _comparable, fixture, reconciler

pytestmark = pytest.mark.wire


def _tenant() -> dict[str, Any]:
    return {
        "users": [user(f"u{i}") for i in range(6)],
        "groups": [{"id": g, "displayName": g} for g in ("g0", "g1", "nested")],
        "members": {"g0": ["u0", "nested"], "g1": ["u1", "u2"], "nested": ["u3"]},
    }


class Both:
    """The same history on an InMemoryDirectory and on the fake Graph, read through GraphDirectory."""

    def __init__(self, server: FakeGraphServer, directory: Any) -> None:
        self.memory = InMemoryDirectory.from_dict(_tenant())
        self.server = server
        self.graph = directory
        self.cursors: dict[str, Any] = {"memory": None, "graph": None}
        self.kept: dict[str, dict[str, frozenset[str]]] = {"memory": {}, "graph": {}}

    def delete(self, group_id: str, *, soft: bool = True) -> None:
        self.memory.delete_group(group_id)
        self.server.remove_group(group_id, soft=soft)

    def restore(self, group_id: str, members: list[str]) -> None:
        self.memory.put_group(DirectoryGroup(group_id, group_id), members)
        self.server.add_group({"id": group_id, "displayName": group_id}, members=members)

    def join(self, group_id: str, member_id: str) -> None:
        self.memory.add_member(group_id, member_id)
        self.server.add_member(group_id, member_id)

    async def round(self, tracked: list[str]) -> DirectoryDelta:
        found: dict[str, DirectoryDelta] = {}
        for name, directory in (("memory", self.memory), ("graph", self.graph)):
            delta, self.cursors[name] = await directory.changes(self.cursors[name], tracked)
            found[name] = delta
            users = {u.id: u for u in self.memory.users.values()}
            self.kept[name] = apply_delta(self.kept[name], users, delta, tracked).groups
        assert found["memory"] == found["graph"]  # the same change log, group for group
        assert self.kept["memory"] == self.kept["graph"]
        # ... and the fold of it is what a full read sees now
        folded = snapshot_members(self.kept["memory"], self.memory.users, tracked)
        for group_id in tracked:
            if group_id in self.memory.groups:
                assert {u.id for u in folded[group_id]} == {u.id for u in self.memory.transitive_members(group_id)}
            else:
                assert group_id not in folded
        return found["memory"]


async def _both(scenario: Any) -> None:
    with FakeGraphServer(_tenant()) as server:
        directory, _ = directory_for(server)
        async with directory:
            both = Both(server, directory)
            await both.round(["g0", "g1", "nested"])
            await scenario(both)


async def test_a_deleted_group_is_removed_with_either_reason_and_its_memberships_end():
    async def scenario(both: Both) -> None:
        both.delete("nested", soft=False)
        both.delete("g1")
        delta = await both.round(["g0", "g1", "nested"])
        assert delta.removed_groups == {"g1", "nested"}
        assert delta.group("g0").removed_groups == {"nested"}

    await _both(scenario)


async def test_a_group_restored_empty_is_listed_again_not_left_deleted():
    async def scenario(both: Both) -> None:
        both.delete("g1")
        await both.round(["g0", "g1", "nested"])
        both.restore("g1", [])
        delta = await both.round(["g0", "g1", "nested"])
        listed = delta.group("g1")
        assert listed is not None and not listed.changed and not delta.empty
        assert "g1" in both.kept["memory"]

    await _both(scenario)


async def test_a_group_restored_with_members_is_listed_with_its_whole_membership():
    async def scenario(both: Both) -> None:
        both.delete("g1")
        await both.round(["g0", "g1", "nested"])
        both.restore("g1", ["u1", "u4"])
        delta = await both.round(["g0", "g1", "nested"])
        assert delta.group("g1").added_users == {"u1", "u4"}

    await _both(scenario)


async def test_a_group_deleted_and_re_created_in_one_window_loses_its_old_members():
    async def scenario(both: Both) -> None:
        both.delete("nested")
        both.restore("nested", ["u5"])
        both.join("g0", "nested")
        delta = await both.round(["g0", "g1", "nested"])
        assert delta.group("nested").removed_users == {"u3"}
        assert delta.group("nested").added_users == {"u5"}
        assert both.kept["memory"]["nested"] == {"u5"}

    await _both(scenario)


async def test_a_group_created_deleted_and_restored_between_rounds_is_read_as_the_truth():
    async def scenario(both: Both) -> None:
        both.delete("g1")
        both.restore("g1", ["u2", "u3"])
        both.delete("g1")
        await both.round(["g0", "g1", "nested"])
        both.restore("g1", ["u5"])
        both.delete("nested")
        both.restore("nested", [])
        await both.round(["g0", "g1", "nested"])

    await _both(scenario)


# -- through the Reconciler: incremental after delete/restore/re-create == full -----------------


class Runs:
    """Two stores over one directory's history: one read incrementally, one in full every run."""

    def __init__(self, directory: Any) -> None:
        self.directory = directory
        self.incremental, self.full = InMemoryUserStore(), InMemoryUserStore()

    async def start(self) -> None:
        assert (await reconciler(self.directory, self.incremental).run(CONFIG, actor=SYSTEM)).ok
        assert (await reconciler(self.directory, self.full).run(CONFIG, actor=SYSTEM, mode="full")).ok

    async def next(self, step: str = "") -> Any:
        """One run each; the incremental one must read changes and end where the full one ends."""
        report = await reconciler(self.directory, self.incremental).run(CONFIG, actor=SYSTEM)
        assert report.mode == "incremental", (step, report.mode_reason)
        full = await reconciler(self.directory, self.full).run(CONFIG, actor=SYSTEM, mode="full")
        assert report.ok == full.ok, (step, report.errors, full.errors)
        a, b = await self.incremental.load("oak"), await self.full.load("oak")
        assert synced_access_of(a) == synced_access_of(b), step
        assert a.group_members == b.group_members, step
        assert _comparable(report.held_removals) == _comparable(full.held_removals), step
        return report


async def test_a_nested_group_re_created_with_other_members_takes_the_old_members_access_away():
    directory = InMemoryDirectory.from_dict(fixture())
    runs = Runs(directory)
    await runs.start()
    assert "u6" in synced_access_of(await runs.incremental.load("oak"))  # through g0 -> nested
    directory.delete_group("nested")
    directory.put_group(DirectoryGroup("nested", "NESTED"), ["u7"])
    directory.add_member("g0", "nested")
    await runs.next()
    access = synced_access_of(await runs.incremental.load("oak"))
    assert "u6" not in access and "u7" in access


async def test_a_mapped_group_restored_empty_is_no_stale_mapping_in_incremental_runs():
    directory = InMemoryDirectory.from_dict(fixture())
    runs = Runs(directory)
    await runs.start()
    directory.delete_group("g1")
    deleted = await runs.next("deleted")
    assert not deleted.ok  # a stale mapping, in both
    directory.put_group(DirectoryGroup("g1", "G1"))
    restored = await runs.next("restored")
    assert restored.ok
    again = await runs.next("again")  # and it stays restored
    assert again.ok


async def test_a_mapped_group_restored_with_members_gives_them_access_again():
    directory = InMemoryDirectory.from_dict(fixture())
    runs = Runs(directory)
    await runs.start()
    directory.delete_group("g2")
    await runs.next("deleted")
    directory.put_group(DirectoryGroup("g2", "G2"), ["u4", "u7"])
    await runs.next("restored")
    assert {"u4", "u7"} <= set(synced_access_of(await runs.incremental.load("oak")))


async def test_over_graph_a_mapped_group_deleted_then_restored_ends_where_a_full_run_ends():
    with FakeGraphServer(fixture()) as server:
        directory, _ = directory_for(server)
        async with directory:
            runs = Runs(directory)
            await runs.start()
            for step in ("delete", "restore empty", "delete nested", "re-create nested", "quiet"):
                if step == "delete":
                    server.remove_group("g1")
                elif step == "restore empty":
                    server.add_group({"id": "g1", "displayName": "G1"})
                elif step == "delete nested":
                    server.remove_group("nested", soft=False)
                elif step == "re-create nested":
                    server.add_group({"id": "nested", "displayName": "NESTED"}, members=["u7"])
                    server.add_member("g0", "nested")
                await runs.next(step)
