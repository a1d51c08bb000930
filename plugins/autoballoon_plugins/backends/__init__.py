"""Backends (inventory and actuators): QMP and libvirt, with the virtio-mem arithmetic
both share (:mod:`.virtio_mem`).
"""
