"""The pure planning core: the changes, the plan, the planner and its guards, identity matching, group
mirroring, what a trust remembers between runs, and what the Import Log says. No IO."""
