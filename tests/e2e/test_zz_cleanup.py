"""Runs last (files run in name order): nothing of this run may be left behind."""

from __future__ import annotations

import os

import topology


def test_no_namespaces_left_behind():
    left = topology.own_namespaces()
    assert not left, f"namespaces of this run (pid {os.getpid()}) still exist: {left}"

