"""Checkpoint I/O behind :mod:`acl_bundle.checkpoint`, :mod:`acl_bundle.tf_checkpoint` and :mod:`acl_bundle.watcher`."""
