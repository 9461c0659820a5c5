"""The device runtime behind :class:`acl_bundle.BundleModel` (see docs/development.md)."""
