"""Fixtures shared by the integration tests."""

import libvirtd

libvirt_daemon = libvirtd.libvirt_daemon
