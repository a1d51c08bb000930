"""Pressure sources: vmpressure, PSI, watermark, balloon statistics, the guest channel.

The ``_kernel_*`` modules are their shared kernel-interface helpers.
"""
