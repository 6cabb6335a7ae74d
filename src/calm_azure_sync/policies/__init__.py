"""The policies an admin sets: group mappings, exclusions and their auto-detect, the trust hierarchy, the
configuration that holds them and its checks against the directory. Pure: no IO."""
