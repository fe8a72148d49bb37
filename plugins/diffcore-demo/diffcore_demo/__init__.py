"""``diffcore demo``: train a small score model on a 2-D data set, sample it with two samplers, and
write pictures and a report.

A command plugin: :mod:`diffcore_demo.command` adds the subcommand (through the
``diffcore.commands`` entry-point group) and imports nothing heavy; the run itself is
:mod:`diffcore_demo.demo`. The default spec is the package file ``demo_moons.yaml``
(``examples/demo_moons.yaml`` in the source tree links to it).
"""
