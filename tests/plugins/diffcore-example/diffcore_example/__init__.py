"""An example third-party plugin distribution with two plugins:

- :mod:`diffcore_example.cosine` (entry-point group ``diffcore``): the cosine schedule of Nichol &
  Dhariwal (2021) as a process;
- :mod:`diffcore_example.commands` (entry-point group ``diffcore.commands``): the
  ``diffcore cosine-schedule`` subcommand, printing that schedule.

This package module stays empty: importing ``diffcore_example.commands`` runs it, and the command
plugin must not import torch (``diffcore --help`` loads it).
"""
